REPORT_THREADS, REPORT_RESOURCES = job_resources("report")


rule report:
    input:
        runs=TARGETS["evaluate"],
        curves=TARGETS["pretrain"],
        audit=cxaudit.audit_file(PARAMS),
    output:
        report_outputs(),
    log:
        f"{LOGS}/report.log",
    conda:
        ENV
    threads: REPORT_THREADS
    resources:
        **REPORT_RESOURCES,
    params:
        cfg=lambda wc: as_arg(matrix.report_params(PARAMS)),
        cli=CLI,
    shell:
        "OMP_NUM_THREADS=1 {params.cli} report --workers {threads} --resolved {params.cfg} > {log} 2>&1"
