PRETRAIN_THREADS, PRETRAIN_RESOURCES = job_resources(
    "pretrain", "method", lambda wc: pretrain_devices(wc.method)
)


rule pretrain:
    input:
        os.path.join(PATHS["prepared"], PARAMS["pretrain"]["dataset"]),
    output:
        directory(os.path.join(PATHS["checkpoints"], "{method}")),
    log:
        f"{LOGS}/pretrain/{{method}}.log",
    benchmark:
        f"{BENCH}/pretrain/{{method}}.tsv"
    priority: matrix.PRIORITY["pretrain"]
    conda:
        ENV
    threads: PRETRAIN_THREADS  # params.yaml resources.pretrain (per process) x pretrain.engine.devices
    resources:
        **PRETRAIN_RESOURCES,
    params:
        cfg=lambda wc: as_arg(
            {**cxconfig.method_params(PARAMS, wc.method), "seed": PARAMS["seed"]}
        ),
        work=os.path.join(PATHS["checkpoints"] + ".work", "{method}"),
        launch=lambda wc: pretrain_launch(wc.method),
        omp=lambda wc: request("pretrain", wc.method)["threads"],
    shell:
        "OMP_NUM_THREADS={params.omp} {params.launch} pretrain {wildcards.method} --data {input} --out {output}"
        " --work {params.work} --resolved {params.cfg} > {log} 2>&1"
