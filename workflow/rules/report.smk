REPORT_THREADS, REPORT_RESOURCES = job_resources("report")
# Snakemake's report() flag under another name: snakefmt reads a line that starts with "report(" as the directive
mark_for_report = report


def report_outputs():
    """The report's files (matrix.report_files); the HTML tables, the PNG figures and runs.csv marked for
    `snakemake --report report.html`, each with its caption from workflow/report/."""
    out = []
    for key, path in sorted(matrix.report_files(PARAMS).items()):
        table, _, ext = key.rpartition("_")
        if key.startswith("figure_") and ext == "png":
            name = table.removeprefix("figure_")
            out.append(
                mark_for_report(
                    path,
                    caption=f"../report/figure_{name}.rst",
                    category="Figures",
                    labels={"figure": name},
                )
            )
        elif ext == "html":
            group = (
                "Uncertainty and comparisons"
                if table in ("scorecard", "comparisons")
                else "Published vs reproduced"
            )
            out.append(
                mark_for_report(
                    path,
                    caption=f"../report/table_{table}.rst",
                    category=group,
                    labels={"table": table},
                )
            )
        elif key == "runs_csv":
            out.append(
                mark_for_report(
                    path,
                    caption="../report/runs.rst",
                    category="Uncertainty and comparisons",
                    labels={"table": "runs"},
                )
            )
        else:
            out.append(path)
    return out


rule report:
    input:
        runs=TARGETS["evaluate"],
        curves=TARGETS["pretrain"],
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
    shell:
        "OMP_NUM_THREADS={threads} {CLI} report --resolved {params.cfg} > {log} 2>&1"
