"""``python -m cxrbench <stage>``: one thin command per stage (parse, resolve parameters, call the library).

Every stage takes its parameters either from a parameter file (``--params params.yaml``, the default, with
``--set key=value`` overrides) or, when Snakemake calls it, as the already-resolved JSON slice (``--resolved``), so the
command line and the workflow run one code path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cxrbench import config


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return config.load_params(args.params, args.set)


def _resolved(args: argparse.Namespace, resolve) -> dict[str, Any]:
    if args.resolved:
        return json.loads(args.resolved)
    return resolve(_params(args))


def _describe(name: str, obj: Any) -> str:
    """One line for ``list``: a declared ``title``, else the first sentence of the docstring of the item's own module
    (one file per registered method / task) or of the object itself."""
    import re

    own_module = sys.modules.get(getattr(obj, "__module__", ""))
    module_doc = own_module.__doc__ if own_module and own_module.__name__.rsplit(".", 1)[-1] == name else None
    doc = getattr(obj, "title", "") or module_doc or getattr(obj, "__doc__", "") or ""
    sentence = re.split(r"(?<=[.;])\s", " ".join(doc.split()), maxsplit=1)[0]
    return sentence if len(sentence) <= 110 else sentence[:107].rstrip() + "..."


def cmd_list(args: argparse.Namespace) -> int:
    from cxrbench.registry import BACKBONES, DATASETS, METHODS, TASKS

    for title, reg in (("datasets", DATASETS), ("methods", METHODS), ("tasks", TASKS), ("backbones", BACKBONES)):
        print(f"{title}:")
        for name, obj in reg.items():
            print(f"  {name:<18} {_describe(name, obj)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Every problem of the file on its own line (stderr), exit status 2; else the size of the matrix."""
    try:
        params = _params(args)
    except config.ParamsError as err:
        lines = getattr(err, "lines", None) or [str(err)]
        print("\n".join(lines), file=sys.stderr)
        print(f"cxrbench validate: {args.params}: {len(lines)} problem{'s' * (len(lines) > 1)}", file=sys.stderr)
        return 2
    from cxrbench import matrix

    print(f"{args.params}: valid; {len(matrix.runs(params))} runs over {len(matrix.datasets(params))} datasets")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from cxrbench import matrix

    targets = matrix.targets(_params(args))
    for phase in [args.phase] if args.phase else list(targets):
        print("\n".join(targets[phase]))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from cxrbench.data.synthetic import generate

    syn = _resolved(args, lambda params: params["synthetic"])
    summary = generate(
        Path(args.out), seed=syn["seed"], sizes=syn["sizes"], image_size=syn["image_size"],
        datasets=args.datasets or None, duplicates=int(syn.get("duplicates", 0)),
        test_sizes=syn.get("test_sizes"), workers=int(args.workers or 1),
    )
    marker = Path(args.out) / "SYNTHETIC.json"  # what the workflow depends on: written last, atomically
    tmp = marker.with_suffix(".json.tmp")
    tmp.write_text(config.dumps(summary))
    tmp.replace(marker)
    # the planted fake identifiers stay beside the raw data (for the privacy tests), out of logs
    print(config.dumps({k: v for k, v in summary.items() if k != "planted_phi"}))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Exit 0 done, 2 bad input (one message naming file/row/column, after the table of every problem), 1 a bug."""
    from cxrbench.data.formats._base import DataFormatError
    from cxrbench.data.prepare import prepare_dataset

    p = _resolved(args, lambda params: config.dataset_params(params, args.dataset))
    try:
        summary = prepare_dataset(
            args.dataset, Path(args.raw or p["raw"]), Path(args.out),
            size=args.size or p["image_size"], split_protocol=args.split_protocol or p["split_protocol"],
            fraction_seed=p["fraction_seed"], fractions=tuple(p["fractions"]), min_positives=p.get("min_positives", 1),
            workers=args.workers or p.get("workers"), skip_bad=p["skip_bad"],
            max_skipped_fraction=p.get("max_skipped_fraction", 0.001), options=p.get("options", {}),
        )
    except DataFormatError as err:
        print(f"cxrbench prepare: error: {err}", file=sys.stderr)
        return 2
    print(config.dumps(summary))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from cxrbench.pretrain import run_pretrain

    p = _resolved(args, lambda params: {**config.method_params(params, args.method), "seed": params["seed"]})
    engine = p.pop("engine")
    seed = p.pop("seed")
    work = Path(args.work) if args.work else None
    method = str(p.get("method", args.method))  # the registered method a named entry derives from
    summary = run_pretrain(method, p, engine, Path(args.data), Path(args.out), seed=seed, work_dir=work)
    print(config.dumps(summary))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """One run (``--task --dataset --fraction --seed --data --out``), or several in one process (``--runs
    task:dataset:fraction:seed ...`` under ``--prepared`` and ``--runs-root``, what the workflow's jobs call). With
    several, a failing run is reported and the others still run; the exit status is then 1."""
    from cxrbench import matrix

    if args.runs:
        templates = [matrix.RunTemplate.parse(spec) for spec in args.runs]
    else:
        missing = [f"--{n}" for n in ("task", "dataset", "fraction", "seed", "data", "out") if getattr(args, n) is None]
        if missing:
            raise config.ParamsError(f"evaluate: give --runs, or one run with {' '.join(missing)}")
        templates = [matrix.RunTemplate(args.task, args.dataset, args.fraction, args.seed)]
    tasks = sorted({t.task for t in templates})
    resolved = _resolved(args, lambda params: {t: config.task_params(params, t) for t in tasks})  # task -> params
    if not args.runs:  # one run: its error is the command's error
        _evaluate_one(args, templates[0], resolved[templates[0].task])
        return 0
    failed = _evaluate_batch(args, templates, resolved)
    if failed:
        print(f"cxrbench evaluate: {len(failed)} of {len(templates)} runs failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _evaluate_batch(args: argparse.Namespace, templates: list[Any], resolved: dict[str, Any]) -> list[str]:
    """A chunk of runs (``--runs``) through :mod:`cxrbench.batch`: duplicates written from the run they repeat,
    cells heaviest first, ``--processes`` forked workers (OMP threads split among them)."""
    import os

    from cxrbench import batch
    from cxrbench.evaluate import reuse_run, work_key
    from cxrbench.registry import TASKS

    procs = int(args.processes or 1)
    if procs < 1:
        raise config.ParamsError(f"evaluate --processes must be >= 1, got {procs}")
    threads = max(1, int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1) // procs)  # per worker

    def key_of(t: Any) -> str | None:
        try:
            return work_key(t.task, _data_dir(args, t), t.dataset, t.fraction, t.seed, resolved[t.task])
        except Exception:  # noqa: BLE001 - computed, not reused: the run itself then reports what is wrong
            return None

    def reuse_one(t: Any, source: Any) -> bool:
        result = reuse_run(_out_dir(args, source), _out_dir(args, t), t.fraction)
        print(f"{t.spec()}: " + config.dumps({k: result[k] for k in ("status", "metrics") if k in result}))
        return True

    return batch.run_batch(templates, lambda t: _evaluate_one(args, t, resolved[t.task]), reuse_one, key_of,
                           lambda task: float(getattr(TASKS.get(task), "relative_cost", 1.0)), processes=procs,
                           warm_up=lambda: _warm_up(args, templates, resolved), threads_per_process=threads)


def _warm_up(args: argparse.Namespace, templates: list[Any], resolved: dict[str, Any]) -> None:
    """What every run of the chunk needs, loaded once before workers fork: the task modules, the stores and the
    checkpoint in the form every task uses. The full model (text tower, decoder: ~2-3 s with the transformers import)
    is loaded here only when every task of the chunk needs it; otherwise the worker that first runs such a task loads
    it, while the other worker computes (serial start-up leaves one of the job's cores idle)."""
    import contextlib

    from cxrbench.evaluate import load_pretrained, needs_full_model, open_dataset
    from cxrbench.registry import TASKS

    forms = set()
    for t in templates:
        with contextlib.suppress(Exception):  # what fails here fails again in its run, which reports it
            forms.add(needs_full_model(TASKS.get(t.task)(resolved[t.task])))
            open_dataset(_data_dir(args, t))
    for full in sorted(forms)[:1]:  # False (encoder only) when any task uses only the encoder
        with contextlib.suppress(Exception):
            load_pretrained(Path(args.ckpt), full=full)


def _data_dir(args: argparse.Namespace, t: Any) -> Path:
    return Path(args.data) if args.data else Path(args.prepared) / t.dataset


def _out_dir(args: argparse.Namespace, t: Any) -> Path:
    from cxrbench import matrix

    run = matrix.Run(args.method, t.task, t.dataset, t.fraction, t.seed)
    return Path(args.out) if args.out else Path(run.directory(args.runs_root))


def _evaluate_one(args: argparse.Namespace, t: Any, task_params: dict[str, Any]) -> bool:
    """Run ``t`` and print its status and metrics."""
    from cxrbench.evaluate import run_evaluation

    result = run_evaluation(ckpt_dir=Path(args.ckpt), task=t.task, dataset_dir=_data_dir(args, t), dataset=t.dataset,
                            fraction=t.fraction, seed=t.seed, task_params=task_params, out_dir=_out_dir(args, t),
                            method=args.method, cache_dir=Path(args.cache) if args.cache else None)
    print(f"{t.spec()}: " + config.dumps({k: result[k] for k in ("status", "metrics") if k in result}))
    return True


def cmd_report(args: argparse.Namespace) -> int:
    from cxrbench.report import build_report

    params = _resolved(args, lambda full: full)
    runs_dir = Path(args.runs or params["paths"]["runs"])
    files = build_report(params, runs_dir, Path(args.out or params["paths"]["report"]), workers=args.workers)
    print("\n".join(str(f) for f in files))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from cxrbench import audit

    cfg = _resolved(args, audit.audit_params)
    result = audit.run_audit(cfg)
    out = args.out or audit.audit_file(_params(args))
    audit.write_result(result, out)
    print(config.dumps({"file": str(out), "pairs": result["pairs"], "unmatched": result["unmatched"]}))
    return 0


def _read_yaml(path: str) -> Any:
    """A parameter file read strictly (duplicate keys, syntax errors: file, line and column)."""
    from cxrbench import yamlio

    try:
        return yamlio.load_file(path)
    except yamlio.YamlError as err:
        raise config.ParamsError(str(err)) from None


def cmd_use_params(args: argparse.Namespace) -> int:
    """A complete parameter set (every top-level key: e.g. workflow/params/paper.yaml) REPLACES params.yaml, so no
    value of the previous scale survives; a partial one (an overlay such as workflow/params/ci.yaml) is merged over
    it."""
    import yaml

    overlay = _read_yaml(args.file) or {}
    complete = set(config.schema()["required"]) <= set(overlay)
    if complete:
        new = overlay
    else:
        new = config.merge(_read_yaml(args.params), overlay)
    merged = config.validate_params(new, source=args.file)
    tmp = Path(args.params).with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(merged, sort_keys=False))
    tmp.replace(args.params)
    how = "replaced by" if complete else "merged with"
    print(f"{args.params}: {how} {args.file}" + ("" if complete else " (an overlay: the other values stay)"))
    return 0


def cmd_check_tree(args: argparse.Namespace) -> int:
    from cxrbench.treelock import TreeBusy, check_tree

    try:
        check_tree(Path.cwd())
    except TreeBusy as err:
        print(f"cxrbench: {err}", file=sys.stderr)
        return 3
    return 0


def cmd_dvc_sync(args: argparse.Namespace) -> int:
    from cxrbench.dvcsync import sync

    return sync(Path.cwd(), all_built=args.all_built, overridden=args.overridden)


def _add_params(p: argparse.ArgumentParser, resolved: bool = False) -> None:
    p.add_argument("--params", default=str(config.DEFAULT_PARAMS), help="parameter file (default params.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    if resolved:
        p.add_argument("--resolved", help="resolved parameters of this stage as JSON (what Snakemake passes)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cxrbench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True, metavar="<stage>")

    def add(name: str, func, help: str, resolved: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _add_params(p, resolved)
        p.set_defaults(func=func)
        return p

    add("list", cmd_list, "list the registered datasets, methods, tasks and backbones")
    add("validate", cmd_validate, "validate the parameter file and count the runs of the matrix")
    p = add("targets", cmd_targets, "print the final targets of the matrix (per phase)")
    p.add_argument("--phase", choices=["data", "pretrain", "evaluate", "audit", "report"],
                   help="only this phase's targets")
    p = add("generate", cmd_generate, "write the seeded synthetic datasets in their real download layouts", True)
    p.add_argument("--out", required=True, help="directory of the synthetic downloads (one folder per dataset)")
    p.add_argument("--datasets", nargs="*", help="only these datasets (default: every one in synthetic.sizes)")
    p.add_argument("--workers", type=int, default=1, help="datasets written in parallel processes (default 1)")
    p = add("prepare", cmd_prepare, "prepare one dataset from its download directory into the prepared store", True)
    p.add_argument("dataset", help="a registered dataset (python -m cxrbench list)")
    p.add_argument("--raw", help="its download directory (default: data.datasets.<dataset>.raw)")
    p.add_argument("--out", required=True, help="the prepared store to write (data/prepared/<dataset>)")
    p.add_argument("--split-protocol", choices=["reference", "patient"],
                   help="the papers' published splits, or a patient-level split (default: data.split_protocol)")
    p.add_argument("--size", type=int, help="stored resolution, longest side in pixels (default: data.image_size)")
    p.add_argument("--workers", type=int, help="decoding processes (default: data.workers)")
    p = add("pretrain", cmd_pretrain, "pretrain one method on the prepared corpus", True)
    p.add_argument("method", help="a pretrain.methods entry (python -m cxrbench list)")
    p.add_argument("--data", required=True, help="the prepared pretraining corpus (data/prepared/mimic)")
    p.add_argument("--out", required=True, help="the checkpoint directory to write (data/checkpoints/<method>)")
    p.add_argument("--work", help="resumable training state (default: <out>.work)")
    p = add("evaluate", cmd_evaluate, "downstream runs (method x task x dataset x fraction x seed): one, or several "
            "in one process", True)
    p.add_argument("--method", required=True, help="the matrix method entry (names the run directories)")
    p.add_argument("--ckpt", required=True, help="the method's checkpoint directory (data/checkpoints/<method>)")
    p.add_argument("--runs", nargs="+", metavar="TASK:DATASET:FRACTION:SEED", help="several runs in one process")
    p.add_argument("--prepared", default="data/prepared", help="prepared stores root, with --runs")
    p.add_argument("--runs-root", default="results/runs", help="run directories root, with --runs")
    for name, text in (("task", "one run's task"), ("dataset", "one run's dataset"),
                       ("data", "one run's prepared store"), ("out", "one run's output directory")):
        p.add_argument(f"--{name}", help=text)
    p.add_argument("--fraction", type=int, help="one run's training fraction (percent)")
    p.add_argument("--seed", type=int, help="one run's seed")
    p.add_argument("--cache", help="feature cache directory (default data/features)")
    p.add_argument("--processes", type=int, default=1,
                   help="with --runs: worker processes forked after the start-up (evaluate.processes; default 1)")
    p = add("report", cmd_report, "tables (published vs reproduced), figures and summary metrics", True)
    p.add_argument("--runs", help="root of the run directories (default: paths.runs)")
    p.add_argument("--out", help="report directory (default: paths.report)")
    p.add_argument("--workers", type=int, default=1, help="2: the figures drawn in a second process (default 1)")
    p = add("audit", cmd_audit, "contamination audit: test images and patients each pretraining corpus holds", True)
    p.add_argument("--out", help="result file (default: <audit.out>/contamination.json)")
    p = add("use-params", cmd_use_params, "merge a parameter set (e.g. workflow/params/paper.yaml) into params.yaml")
    p.add_argument("file", help="the parameter set to merge, e.g. workflow/params/ci.yaml")
    add("check-tree", cmd_check_tree, "fail (exit 3) when another Snakemake run holds this working tree (DVC stages "
        "ask before they run)")
    p = add("dvc-sync", cmd_dvc_sync, "record in dvc.lock the phases Snakemake reports up to date (dvc commit)")
    p.add_argument("--all-built", action="store_true", help="the default target has just been built (the "
                   "Snakefile's onsuccess): commit every complete phase without a Snakemake dry run")
    p.add_argument("--overridden", nargs="*", default=[], metavar="KEY", help="keys the run's --config / "
                   "--configfile changed from params.yaml: nothing is committed (dvc.lock records params.yaml)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (config.ParamsError, FileNotFoundError, KeyError) as err:
        print(f"cxrbench {args.command}: error: {err}", file=sys.stderr)
        return 2
