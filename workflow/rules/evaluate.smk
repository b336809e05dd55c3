# The evaluate phase: one rule per chunk of a method's runs (cxrbench.matrix.evaluate_jobs), with the method as the
# wildcard. `evaluate.runs_per_job` sets the chunk: 1 at paper scale (a cluster spreads the runs one per job), more in
# the demo so that a job pays the Python start-up once for many small runs; `evaluate.processes` workers (at most
# the job's threads) share that start-up (cxrbench.batch). Each run still writes its own run directory
# (metrics.json, config.json); a job that fails loses only its own chunk.
EVAL_JOBS = matrix.evaluate_jobs(PARAMS)


for j, chunk in enumerate(EVAL_JOBS):
    req = chunk_request(chunk)

    rule:
        name:
            f"evaluate_{j:03d}"
        input:
            ckpt=os.path.join(PATHS["checkpoints"], "{method}"),
            data=sorted({matrix.prepared_dir(PARAMS, t.dataset) for t in chunk}),
        output:
            [t.metrics_path(PATHS["runs"]) for t in chunk],
        log:
            f"{LOGS}/evaluate/{{method}}/job{j:03d}.log",
        conda:
            ENV
        threads: req["threads"]
        resources:
            mem_mb=req["mem_mb"],
            runtime=req["runtime"],
            gpu=req["gpus"],
        params:
            cfg=constant(
                as_arg(
                    {
                        t: cxconfig.task_params(PARAMS, t)
                        for t in {c.task for c in chunk}
                    }
                )
            ),
            runs=" ".join(t.spec() for t in chunk),
            prepared=constant(PATHS["prepared"]),
            cache=PATHS["features"],
            root=constant(PATHS["runs"]),
            cli=CLI,
            procs=min(int(PARAMS["evaluate"].get("processes", 1)), req["threads"]),
        shell:
            "OMP_NUM_THREADS={threads} {params.cli} evaluate --method {wildcards.method} --runs {params.runs}"
            " --processes {params.procs}"
            " --ckpt {input.ckpt} --prepared {params.prepared} --runs-root {params.root} --cache {params.cache}"
            " --resolved {params.cfg} > {log} 2>&1"
