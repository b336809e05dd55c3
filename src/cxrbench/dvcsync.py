"""Keep DVC's lock in step with what Snakemake built, so one working tree serves both orchestrators.

Snakemake decides staleness by timestamps (and params/code triggers), DVC by content hashes recorded in ``dvc.lock``.
After a Snakemake run the outputs are current but ``dvc.lock`` still describes the previous ones, so ``dvc status``
would call the phases changed. ``sync`` commits every ``dvc.yaml`` stage whose outputs all exist (``dvc commit``), which
records their hashes without running anything. A stage is committed only when Snakemake itself reports its phase
up to date (a dry run), so a partial run never blesses stale outputs of a later phase. (The opposite direction needs
nothing: ``dvc repro`` runs Snakemake.)
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

#: where the pretraining curves go in DVCLive's layout (git-tracked, small; dvc.yaml's top-level plots and metrics)
DVCLIVE_DIR = "results/dvclive/pretrain"


def all_stages(root: Path) -> dict[str, dict]:
    """The stages of ``root/dvc.yaml``, by name."""
    return dict(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])


def complete_stages(root: Path, stages: dict[str, dict] | None = None) -> list[str]:
    """Names of the stages in ``root/dvc.yaml`` (or ``stages``, as :func:`all_stages` read them) whose declared
    outputs (outs, metrics, plots) all exist."""
    stages = all_stages(root) if stages is None else stages
    done = []
    for name, stage in stages.items():
        paths = []
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []) or []:
                paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
        if paths and all((root / p).exists() for p in paths):
            done.append(name)
    return done


#: dvc.yaml stage -> the Snakemake rule that builds that phase
PHASE_RULES = {
    "synthetic": "generate_synthetic", "data": "data", "pretrain": "pretrain_all", "evaluate": "evaluate_all",
    "audit": "audit", "report": "all",
}


def snakemake_up_to_date(root: Path, rule: str) -> bool:
    """True when ``snakemake -n <rule>`` has nothing to do (``--nolock``: safe inside a running workflow)."""
    out = subprocess.run(
        ["snakemake", rule, "-n", "--nolock", "--quiet", "rules"], cwd=root, capture_output=True, text=True, check=False
    )
    return out.returncode == 0 and "Nothing to be done" in out.stdout + out.stderr


def read_curves(path: Path) -> list[dict[str, float]]:
    """An engine curves.csv -> its training rows (those with a ``loss``), numeric cells only (blank cells dropped)."""
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            cells = {k: float(v) for k, v in row.items() if k and v not in ("", None)}
            if "loss" in cells and "step" in cells:
                rows.append(cells)
    return rows


def export_dvclive(checkpoints: Path, out: Path) -> list[str]:
    """Every method's pretraining curves (``<checkpoints>/<method>/curves.csv``) in DVCLive's layout under ``out``:
    ``plots/metrics/<method>/<name>.tsv`` (step, value) for each logged column and ``metrics.json`` with the last
    values, so ``dvc plots show/diff`` draw one curve per method (no missing value drawn as 0) and ``dvc exp show``
    lists the final losses. Written with DVCLive's own metric writer (``dvclive.plots.Metric``), not a ``Live``
    session, which would inspect the Git/DVC repository (and fails in one without commits). Returns the methods."""
    from dvclive.plots import Metric
    from dvclive.serialize import dump_json

    curves = {p.parent.name: read_curves(p) for p in sorted(Path(checkpoints).glob("*/curves.csv"))}
    curves = {m: rows for m, rows in curves.items() if rows}
    if not curves:
        return []
    shutil.rmtree(Path(out) / "plots" / Metric.subfolder, ignore_errors=True)  # a rerun rewrites, never appends
    summary: dict[str, dict[str, float]] = {}
    for method, rows in curves.items():
        for row in rows:
            for name, value in row.items():
                if name in ("step", "epoch"):
                    continue
                metric = Metric(f"{method}/{name}", str(Path(out) / "plots"))
                metric.step = int(row["step"])
                metric.dump(value)
                summary.setdefault(method, {})[name] = value
    dump_json(summary, str(Path(out) / "metrics.json"))
    return list(curves)


def whole_dag_built(targets: Any, target_jobs: Any = (), *restrictions: Any, default: str | None = "all") -> bool:
    """True when a Snakemake run that just succeeded has built the default target (``rule all``, which names every
    phase's outputs): no targets, or only the default rule, and no ``--target-jobs`` / ``--until`` /
    ``--omit-from`` / ``--allowed-rules`` restriction (``restrictions``). Then every phase is up to date and
    :func:`sync` needs no dry run to say so (the dry run re-reads the whole DAG: ~13 s of the demo's end)."""
    if target_jobs or any(restrictions):
        return False
    return not targets or (default is not None and set(targets) == {default})


def overridden_keys(config: Any, params: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value in Snakemake's ``config`` differs from ``params`` (params.yaml as loaded): what a
    ``--config key=value`` or an extra ``--configfile`` changed. DVC records params.yaml's values as the inputs of
    each stage, so outputs built under an override must not be committed as if params.yaml had made them."""
    if isinstance(config, dict) and isinstance(params, dict):
        keys = sorted(set(config) | set(params), key=str)
        return [k for key in keys for k in overridden_keys(config.get(key), params.get(key), f"{prefix}{key}.")]
    return [] if config == params else [prefix.rstrip(".") or "<root>"]


def sync_args(workflow: Any, config: Any, params_file: str | Path) -> list[str]:
    """The ``dvc-sync`` options for the Snakefile's onsuccess: ``--all-built`` when the run built the default target
    (:func:`whole_dag_built`, from Snakemake's ``workflow.dag_settings``; absent before Snakemake 8, then the dry run
    decides) and ``--overridden KEY...`` for what ``--config`` / ``--configfile`` changed (:func:`overridden_keys`)."""
    args = []
    ds = getattr(workflow, "dag_settings", None)
    if ds is not None and whole_dag_built(ds.targets, ds.target_jobs, ds.until, ds.omit_from, ds.allowed_rules,
                                          default=getattr(workflow, "default_target", None)):
        args.append("--all-built")
    changed = overridden_keys(dict(config), yaml.safe_load(Path(params_file).read_text()))
    if changed:
        args += ["--overridden", *changed]
    return args


def sync(root: Path, *, force: bool = True, all_built: bool = False, overridden: list[str] | None = None) -> int:
    """``dvc commit`` the complete stages; returns the exit code of DVC (0 when there is nothing to do).
    ``all_built``: the caller (the Snakefile's onsuccess) knows that the default target has just been built
    (:func:`whole_dag_built`), so every complete stage is committed without asking Snakemake again.
    ``overridden``: the keys that the run's ``--config`` / ``--configfile`` changed (:func:`overridden_keys`):
    nothing is committed then (the dry run would not see them either).
    The pretraining curves are exported to DVCLive first (also under ``dvc repro``, whose stages skip the commit)."""
    if not (root / ".dvc").is_dir():
        print("dvc-sync: not a DVC repository (no .dvc/): nothing to record", file=sys.stderr)
        return 0
    params = yaml.safe_load((root / "params.yaml").read_text()) if (root / "params.yaml").is_file() else {}
    checkpoints = root / params.get("paths", {}).get("checkpoints", "data/checkpoints")
    try:
        export_dvclive(checkpoints, root / DVCLIVE_DIR)
    except (OSError, ValueError) as err:  # curves are a convenience: never fail the run for them
        print(f"dvc-sync: could not export the pretraining curves to {DVCLIVE_DIR}: {err}", file=sys.stderr)
    if os.environ.get("CXRBENCH_UNDER_DVC"):
        return 0
    if overridden:
        print(f"dvc-sync: dvc.lock left as it was: this run overrode params.yaml ({', '.join(overridden)}), and DVC "
              "would record params.yaml's values for outputs built with others; put the values in params.yaml "
              "(python -m cxrbench use-params FILE) to have a run recorded", file=sys.stderr)
        return 0
    declared = all_stages(root)
    complete = [s for s in complete_stages(root, declared) if s in PHASE_RULES]
    if all_built or snakemake_up_to_date(root, PHASE_RULES["report"]):  # the default target names every phase's outputs
        stages = complete
    else:
        stages = [s for s in complete if s != "report" and snakemake_up_to_date(root, PHASE_RULES[s])]
    if not stages:
        return 0
    # Every stage of dvc.yaml: named by the file, which DVC then loads once (6 stage names load dvc.yaml, params.yaml
    # and dvc.lock once per name: 13.7 s against 8.8 s for the demo's 290 runs, measured)
    targets = ["dvc.yaml"] if set(stages) == set(declared) else stages
    cmd = ["dvc", "commit", "--quiet", *(["--force"] if force else []), *targets]
    print("dvc-sync:", " ".join(cmd), file=sys.stderr)
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=root, check=False).returncode
    print(f"dvc-sync: dvc commit {'done' if code == 0 else f'failed (exit {code})'} in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


def _svg(plot_id: str, specs: list[dict]) -> str:
    """One ``dvc plots show --json`` entry -> an inline SVG (matplotlib), or an <img> for image plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for spec in specs:
        content = spec.get("content") or {}
        values = (content.get("data") or {}).get("values") or []
        enc = _encoding(content)
        x, y = enc.get("x", "step"), enc.get("y")
        groups: dict[str, list[tuple[float, float]]] = {}
        for v in values:
            if y in v and x in v and v[y] not in ("", None):
                label = " ".join(str(v[k]) for k in ("rev", "filename", "field") if v.get(k))
                groups.setdefault(label, []).append((float(v[x]), float(v[y])))
        for label, pts in groups.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, marker=".")
        ax.set_xlabel(x)
        ax.set_ylabel(y or "")
    ax.set_title(plot_id, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()[buf.getvalue().find("<svg"):]


def _encoding(spec: Any) -> dict[str, str]:
    """x / y field names of a DVC vega-lite spec: the first ``encoding.x.field`` and ``encoding.y.field`` anywhere
    in it (DVC puts x at the top and y inside nested layers)."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for axis, enc in (node.get("encoding") or {}).items():
                if axis in ("x", "y") and isinstance(enc, dict) and "field" in enc and "aggregate" not in enc:
                    found.setdefault(axis, enc["field"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return found


def plots_page(shown: dict[str, Any]) -> str:
    """A self-contained HTML page (no script, no CDN) of ``dvc plots show --json``'s output (``{"data": {plot id:
    [entries]}, "errors": [...]}``): vega plots redrawn as inline SVG, image plots embedded by path."""
    plots = shown.get("data", {})
    parts = ["<!doctype html><meta charset='utf-8'><title>cxrbench: DVC plots</title>", "<h1>DVC plots</h1>"]
    for plot_id, specs in sorted(plots.items()):
        parts.append(f"<h2>{html.escape(plot_id)}</h2>")
        images = [s for s in specs if s.get("type") == "image"]
        for s in images:
            parts.append(f"<img src='{html.escape(str(s.get('url', plot_id)))}' style='max-width:100%'>")
        if len(images) < len(specs):
            parts.append(_svg(plot_id, [s for s in specs if s.get("type") != "image"]))
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m cxrbench.dvcsync plots [OUT.html] [dvc plots show args]``: what ``dvc plots show`` draws,
    as a page that renders offline (DVC's own HTML loads its charting library from a CDN)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "plots":
        print("usage: python -m cxrbench.dvcsync plots [OUT.html] [dvc plots show options]", file=sys.stderr)
        return 2
    out = Path(args[1] if len(args) > 1 and args[1].endswith(".html") else "dvc_plots/offline.html")
    extra = [a for a in args[1:] if a != str(out)]
    cmd = [sys.executable, "-m", "dvc", "plots", "show", "--json", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return done.returncode
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(plots_page(json.loads(done.stdout)))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
