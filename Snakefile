# cxrbench: raw downloads -> prepared datasets -> pretrained encoders -> downstream matrix -> report.
# Targets come from one pure function (cxrbench.matrix) over params.yaml; all logic lives in src/cxrbench.
# Run:  snakemake --cores all [--use-conda]      SLURM:  snakemake --profile workflow/profiles/slurm


configfile: "params.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset="[a-z0-9_]+",
    method="[a-z0-9_]+",
    task="[a-z0-9_]+",
    fraction="[0-9]+",
    seed="[0-9]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/audit.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    data,
    pretrain_all,
    evaluate_all,


# The default target names every phase's outputs, not only the report: Snakemake does not look at the inputs of a job
# whose outputs are up to date, so with the report alone a deleted run directory would never be rebuilt.
rule all:
    default_target: True
    input:
        TARGETS["data"],
        TARGETS["pretrain"],
        TARGETS["evaluate"],
        TARGETS["audit"],
        TARGETS["report"],


rule data:
    input:
        TARGETS["data"],


rule pretrain_all:
    input:
        TARGETS["pretrain"],


rule evaluate_all:
    input:
        TARGETS["evaluate"],


onstart:
    stop_on_sigterm()


onsuccess:
    sync_dvc()
    announce_results()
