SYNTHETIC_THREADS, SYNTHETIC_RESOURCES = job_resources("generate_synthetic")
PREPARE_THREADS, PREPARE_RESOURCES = job_resources("prepare", "dataset")


rule generate_synthetic:
    output:
        os.path.join(SYNTHETIC["out"], "SYNTHETIC.json"),
    log:
        f"{LOGS}/generate_synthetic.log",
    benchmark:
        f"{BENCH}/generate_synthetic.tsv"
    conda:
        ENV
    threads: SYNTHETIC_THREADS
    resources:
        **SYNTHETIC_RESOURCES,
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        cfg=as_arg(SYNTHETIC),
        cli=CLI,
    shell:
        "OMP_NUM_THREADS=1 {params.cli} generate --out {params.out} --workers {threads} --resolved {params.cfg} > {log} 2>&1"


rule prepare:
    input:
        raw_input,
    output:
        directory(os.path.join(PATHS["prepared"], "{dataset}")),
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    benchmark:
        f"{BENCH}/prepare/{{dataset}}.tsv"
    priority: lambda wc: matrix.prepare_priority(PARAMS, wc.dataset)
    conda:
        ENV
    threads: PREPARE_THREADS
    resources:
        **PREPARE_RESOURCES,
    params:
        cfg=lambda wc: as_arg(cxconfig.dataset_params(PARAMS, wc.dataset)),
        cli=CLI,
    shell:
        "OMP_NUM_THREADS={threads} {params.cli} prepare {wildcards.dataset} --out {output} --workers {threads} --resolved {params.cfg} > {log} 2>&1"
