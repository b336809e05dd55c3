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


def cmd_list(args: argparse.Namespace) -> int:
    from cxrbench.registry import BACKBONES, DATASETS, METHODS, TASKS

    for title, reg in (("datasets", DATASETS), ("methods", METHODS), ("tasks", TASKS), ("backbones", BACKBONES)):
        print(f"{title}:")
        for name, obj in reg.items():
            doc = (getattr(obj, "title", "") or (obj.__doc__ or "").strip().splitlines()[0:1] or [""])
            print(f"  {name:<14} {doc if isinstance(doc, str) else doc[0]}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    params = _params(args)
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
        datasets=args.datasets or None,
    )
    marker = Path(args.out) / "SYNTHETIC.json"  # what the workflow depends on: written last, atomically
    tmp = marker.with_suffix(".json.tmp")
    tmp.write_text(config.dumps(summary))
    tmp.replace(marker)
    # the planted fake identifiers stay beside the raw data (for the privacy tests), out of logs
    print(config.dumps({k: v for k, v in summary.items() if k != "planted_phi"}))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from cxrbench.data.prepare import prepare_dataset

    p = _resolved(args, lambda params: config.dataset_params(params, args.dataset))
    summary = prepare_dataset(
        args.dataset, Path(args.raw or p["raw"]), Path(args.out),
        size=args.size or p["image_size"], split_protocol=args.split_protocol or p["split_protocol"],
        fraction_seed=p["fraction_seed"], fractions=tuple(p["fractions"]), workers=args.workers or p.get("workers"),
        skip_bad=p["skip_bad"], options=p.get("options", {}),
    )
    print(config.dumps(summary))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from cxrbench.pretrain import run_pretrain

    p = _resolved(args, lambda params: {**config.method_params(params, args.method), "seed": params["seed"]})
    engine = p.pop("engine")
    seed = p.pop("seed")
    work = Path(args.work) if args.work else None
    summary = run_pretrain(args.method, p, engine, Path(args.data), Path(args.out), seed=seed, work_dir=work)
    print(config.dumps(summary))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxrbench.evaluate import run_evaluation

    p = _resolved(args, lambda params: config.task_params(params, args.task))
    result = run_evaluation(
        ckpt_dir=Path(args.ckpt), task=args.task, dataset_dir=Path(args.data), dataset=args.dataset,
        fraction=args.fraction, seed=args.seed, task_params=p, out_dir=Path(args.out),
        cache_dir=Path(args.cache) if args.cache else None,
    )
    print(config.dumps({k: result[k] for k in ("status", "metrics") if k in result}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cxrbench.report import build_report

    params = _resolved(args, lambda full: full)
    runs_dir = Path(args.runs or params["paths"]["runs"])
    files = build_report(params, runs_dir, Path(args.out or params["paths"]["report"]))
    print("\n".join(str(f) for f in files))
    return 0


def cmd_use_params(args: argparse.Namespace) -> int:
    import yaml

    current = yaml.safe_load(Path(args.params).read_text())
    overlay = yaml.safe_load(Path(args.file).read_text())
    merged = config.validate_params(config.merge(current, overlay), source=args.file)
    tmp = Path(args.params).with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(merged, sort_keys=False))
    tmp.replace(args.params)
    print(f"{args.params}: now {args.file} merged over the previous parameters")
    return 0


def cmd_dvc_sync(args: argparse.Namespace) -> int:
    from cxrbench.dvcsync import sync

    return sync(Path.cwd())


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
    p.add_argument("--phase", choices=["data", "pretrain", "evaluate", "report"])
    p = add("generate", cmd_generate, "write the seeded synthetic datasets in their real download layouts", True)
    p.add_argument("--out", required=True)
    p.add_argument("--datasets", nargs="*")
    p = add("prepare", cmd_prepare, "prepare one dataset from its download directory into the prepared store", True)
    p.add_argument("dataset")
    p.add_argument("--raw")
    p.add_argument("--out", required=True)
    p.add_argument("--split-protocol", choices=["reference", "patient"])
    p.add_argument("--size", type=int)
    p.add_argument("--workers", type=int, help="decoding processes (default: data.workers)")
    p = add("pretrain", cmd_pretrain, "pretrain one method on the prepared corpus", True)
    p.add_argument("method")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--work", help="resumable training state (default: <out>.work)")
    p = add("evaluate", cmd_evaluate, "run one downstream run (method x task x dataset x fraction x seed)", True)
    for name in ("method", "task", "dataset", "ckpt", "data", "out"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--fraction", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--cache", help="feature cache directory")
    p = add("report", cmd_report, "tables (published vs reproduced), figures and summary metrics", True)
    p.add_argument("--runs")
    p.add_argument("--out")
    p = add("use-params", cmd_use_params, "merge a parameter set (e.g. workflow/params/paper.yaml) into params.yaml")
    p.add_argument("file")
    add("dvc-sync", cmd_dvc_sync, "record in dvc.lock the phases Snakemake reports up to date (dvc commit)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (config.ParamsError, FileNotFoundError, KeyError) as err:
        print(f"cxrbench {args.command}: error: {err}", file=sys.stderr)
        return 2
