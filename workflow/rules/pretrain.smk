rule pretrain:
    input:
        os.path.join(PATHS["prepared"], PARAMS["pretrain"]["dataset"]),
    output:
        directory(os.path.join(PATHS["checkpoints"], "{method}")),
    log:
        f"{LOGS}/pretrain/{{method}}.log",
    benchmark:
        f"{BENCH}/pretrain/{{method}}.tsv"
    conda:
        ENV
    threads: 1  # small demo models train best one per core; clusters raise it (profiles: set-threads)
    resources:
        mem_mb=16000,
        runtime=2880,
    params:
        cfg=lambda wc: as_arg(
            {**cxconfig.method_params(PARAMS, wc.method), "seed": PARAMS["seed"]}
        ),
        work=os.path.join(PATHS["checkpoints"] + ".work", "{method}"),
    shell:
        "OMP_NUM_THREADS={threads} PYTHONPATH=src python -m cxrbench pretrain {wildcards.method} --data {input} --out {output} --work {params.work}"
        " --resolved {params.cfg} > {log} 2>&1"
