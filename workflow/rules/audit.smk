# The contamination audit: every (pretraining corpus, downstream test split) pair of the matrix, by ids and by a
# perceptual hash of the prepared pixels (cxrbench.audit); the report turns its result into tables/contamination.*.
from cxrbench import audit as cxaudit

AUDIT_CFG = cxaudit.audit_params(PARAMS)
AUDIT_THREADS, AUDIT_RESOURCES = job_resources("audit")


rule audit:
    input:
        stores=sorted(AUDIT_CFG["stores"].values()),
        lists=cxaudit.list_paths(PARAMS),
    output:
        cxaudit.audit_file(PARAMS),
    log:
        f"{LOGS}/audit.log",
    benchmark:
        f"{BENCH}/audit.tsv"
    conda:
        ENV
    threads: AUDIT_THREADS
    resources:
        **AUDIT_RESOURCES,
    params:
        cfg=as_arg(AUDIT_CFG),
        cli=CLI,
    shell:
        "OMP_NUM_THREADS={threads} {params.cli} audit --out {output} --resolved {params.cfg} > {log} 2>&1"
