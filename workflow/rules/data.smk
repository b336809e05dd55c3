rule generate_synthetic:
    output:
        os.path.join(SYNTHETIC["out"], "SYNTHETIC.json"),
    log:
        f"{LOGS}/generate_synthetic.log",
    benchmark:
        f"{BENCH}/generate_synthetic.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        cfg=as_arg(SYNTHETIC),
    shell:
        "OMP_NUM_THREADS={threads} PYTHONPATH=src python -m cxrbench generate --out {params.out} --resolved {params.cfg} > {log} 2>&1"


rule prepare:
    input:
        raw_input,
    output:
        directory(os.path.join(PATHS["prepared"], "{dataset}")),
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    benchmark:
        f"{BENCH}/prepare/{{dataset}}.tsv"
    conda:
        ENV
    threads: 8
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        cfg=lambda wc: as_arg(cxconfig.dataset_params(PARAMS, wc.dataset)),
    shell:
        "OMP_NUM_THREADS={threads} PYTHONPATH=src python -m cxrbench prepare {wildcards.dataset} --out {output} --workers {threads} --resolved {params.cfg} > {log} 2>&1"
