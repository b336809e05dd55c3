rule report:
    input:
        runs=TARGETS["evaluate"],
        curves=TARGETS["pretrain"],
    output:
        TARGETS["report"],
    log:
        f"{LOGS}/report.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=lambda wc: as_arg(matrix.report_params(PARAMS)),
    shell:
        "OMP_NUM_THREADS={threads} PYTHONPATH=src python -m cxrbench report --resolved {params.cfg} > {log} 2>&1"
