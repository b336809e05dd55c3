rule evaluate:
    input:
        ckpt=os.path.join(PATHS["checkpoints"], "{method}"),
        data=os.path.join(PATHS["prepared"], "{dataset}"),
    output:
        os.path.join(
            PATHS["runs"], "{method}/{task}/{dataset}/f{fraction}/s{seed}/metrics.json"
        ),
    log:
        f"{LOGS}/evaluate/{{method}}/{{task}}/{{dataset}}/f{{fraction}}_s{{seed}}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
    params:
        cfg=lambda wc: as_arg(cxconfig.task_params(PARAMS, wc.task)),
        cache=PATHS["features"],
        out=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "OMP_NUM_THREADS={threads} PYTHONPATH=src python -m cxrbench evaluate --method {wildcards.method} --task {wildcards.task}"
        " --dataset {wildcards.dataset} --fraction {wildcards.fraction} --seed {wildcards.seed}"
        " --ckpt {input.ckpt} --data {input.data} --out {params.out} --cache {params.cache}"
        " --resolved {params.cfg} > {log} 2>&1"
