"""The pretrain stage: build a registered method, train it through the one engine, export its checkpoint directory;
and read a checkpoint directory back for the downstream tasks (``load_pretrained``).

Checkpoint directory (contract in ``cxrbench.methods._base``): encoder.pt, model.pt, config.json, params.json, each
written atomically (temporary name, then ``os.replace``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrbench.fingerprint import claim_state_dir
from cxrbench.methods._base import Pretrained
from cxrbench.methods._common import count_parameters
from cxrbench.registry import METHODS


def _umask_mode() -> int:
    """0o666 less this process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600: give the file the mode open() would (shared projects)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_torch(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_bytes(path, buf.getvalue())


def _atomic_json(obj: Any, path: Path) -> None:
    _atomic_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def pretraining_rows(store: Any) -> tuple[Any, list[str]]:
    """Train rows of the store that have a non-empty report text, and those texts."""
    rows = store.rows("train")
    texts = store.texts(rows) if "text" in store.manifest.columns else [""] * len(rows)
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    return rows[keep], [texts[i] for i in keep]


def run_pretrain(
    method: str, method_params: dict[str, Any], engine_params: dict[str, Any], data_dir: Path, out_dir: Path, *,
    seed: int, work_dir: Path | None = None,
) -> dict[str, Any]:
    """Pretrain ``method`` on the prepared MIMIC-CXR store at ``data_dir`` and write its checkpoint directory.

    The engine's resumable state (last.ckpt) lives in ``work_dir`` (default ``<out_dir>/train``), outside the
    versioned output when the workflow passes one, so a killed job resumes and the checkpoint directory stays small.
    The state is keyed by :func:`pretrain_fingerprint` (``work_dir/fingerprint.json`` and inside last.ckpt): a
    rerun with other parameters, data or code removes it and trains from scratch. The exported config.json and
    encoder.pt record the same fingerprint.

    Text-less rows are dropped for every method (the pretraining corpus is the image-report pairs). Methods whose
    ``trains()`` is False (random, external) are exported without touching the data. Returns a summary dict
    (method, steps, first/last logged loss, parameter counts, paths)."""
    from cxrbench.engine.precision import resolved_engine_params

    out_dir = Path(out_dir)
    params = {**method_params, "seed": int(seed)}
    m = METHODS.get(method)(params)
    summary: dict[str, Any] = {"method": method, "seed": int(seed), "steps": 0}
    recorded = resolved_engine_params(dict(engine_params))  # precision: the resolved value + precision_requested
    fp = pretrain_fingerprint(method, params, recorded, Path(data_dir) if m.trains() else None)
    if m.trains():
        from cxrbench.data.loader import ImageDataset, collate
        from cxrbench.data.recipes import content_boxes
        from cxrbench.data.store import PreparedDataset
        from cxrbench.engine import EngineConfig, fit
        from cxrbench.methods._common import attach_content

        store = PreparedDataset(Path(data_dir))
        rows, texts = pretraining_rows(store)
        if len(rows) == 0:
            raise ValueError(f"{data_dir}: no train rows with report text to pretrain {method!r} on")
        module = m.build(corpus=texts if m.has_text else None)
        attach_content(module, content_boxes(store, np.arange(len(store.manifest))))  # the input recipe's regions
        fields = ("image", "text") if m.has_text else ("image",)
        work = Path(work_dir) if work_dir is not None else out_dir / "train"
        if int(os.environ.get("RANK", "0")) == 0:  # one process claims; the engine's identity check covers the rest
            claim_state_dir(work, fp, what=f"pretraining state of {method!r}")
        result = fit(module, ImageDataset(store, rows, fields=fields), EngineConfig.from_dict(dict(engine_params)),
                     work, seed=int(seed), collate_fn=collate, fingerprint=fp)
        if (work / "curves.csv").exists() and work != out_dir and int(os.environ.get("RANK", "0")) == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / "curves.csv", out_dir / "curves.csv")
        if hasattr(module, "pretrain_examples") and int(os.environ.get("RANK", "0")) == 0:
            save_examples(module, store, rows, out_dir)
        losses = [h["loss"] for h in result.history if "loss" in h]
        summary.update(steps=result.steps, n_pairs=len(rows), first_loss=losses[0] if losses else None,
                       last_loss=losses[-1] if losses else None)
    else:
        module = m.build()
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 writes the checkpoint files
        summary["parameters"] = export(module, method, params, out_dir, engine_params=recorded, fingerprint=fp)
    return summary


def save_examples(module: Any, store: Any, rows: Any, out_dir: Path, k: int = 4) -> None:
    """A few corpus images through the method's ``pretrain_examples`` (G2D: attention map, pseudo-mask, decoder
    prediction) into ``out_dir/examples.npz`` for the report's gallery; manifest rows only, no ids."""
    from cxrbench.tasks._predictions import save_pretrain_examples

    pick = np.asarray(rows[:k])
    images = torch.from_numpy(np.asarray(store.images[pick], dtype=np.float32) / 255.0)[:, None]  # (k, 1, S, S)
    maps = module.pretrain_examples(images)
    if maps is None:
        return
    save_pretrain_examples(out_dir, rows=pick, **{name: v.float().cpu().numpy() for name, v in maps.items()})


def pretrain_fingerprint(method: str, params: dict[str, Any], engine_params: dict[str, Any],
                         data_dir: Path | None) -> dict[str, Any]:
    """The inputs of a pretraining: method, its resolved parameters (seed included), the engine parameters that
    affect training (precision resolved), the code version and, for a method that trains, the content hash of the
    prepared corpus (``cxrbench.fingerprint.store_hash``)."""
    from cxrbench.engine.loop import NON_SEMANTIC
    from cxrbench.fingerprint import code_version, normalise, store_hash

    engine = {k: v for k, v in engine_params.items() if k not in NON_SEMANTIC}
    fp = {"stage": "pretrain", "method": method, "params": params, "engine": engine, "code": code_version()}
    if data_dir is not None:
        fp["data"] = store_hash(data_dir)
    return normalise(fp)


def export(module: Any, method: str, params: dict[str, Any], out_dir: Path, *,
           engine_params: dict[str, Any] | None = None, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write encoder.pt, model.pt, config.json, params.json into ``out_dir``; returns the parameter counts.
    ``fingerprint`` (the pretraining's inputs) is recorded in encoder.pt and config.json, beside the hash of the
    exported encoder weights (``encoder_hash``, what downstream runs key their state and caches by)."""
    from cxrbench.fingerprint import module_hash

    out_dir = Path(out_dir)
    module = module.cpu().eval()
    backbone = module.export_backbone()
    cfg = dict(backbone.config)
    image_size = int(getattr(module, "image_size", None) or module.input.image_size)
    normalize = getattr(module, "normalize", None) or module.input.normalize
    recipe = input_recipe(image_size, normalize)  # how the encoder is fed (cxrbench.data.recipes)
    _atomic_torch({"method": method, "backbone": {"name": cfg.pop("name"), "kwargs": cfg},
                   "state_dict": backbone.state_dict(), "image_size": image_size,
                   "normalize": {k: normalize[k] for k in ("mean", "std")}, "fingerprint": fingerprint or {},
                   "input": {k: recipe[k] for k in ("resize", "crop", "scale")}, "recipe": recipe},
                  out_dir / "encoder.pt")
    _atomic_torch({"method": method, "params": params, "state_dict": module.state_dict()}, out_dir / "model.pt")
    _atomic_json({"method": method, "method_params": params, "engine_params": engine_params or {},
                  "fingerprint": fingerprint or {}, "encoder_hash": module_hash(backbone), "recipe": recipe},
                 out_dir / "config.json")
    counts = {"method": method, "model": count_parameters(module), "encoder": count_parameters(backbone)}
    _atomic_json(counts, out_dir / "params.json")
    return counts


def input_recipe(image_size: int, normalize: dict[str, Any]) -> dict[str, Any]:
    """The encoder's whole input recipe as recorded (``cxrbench.data.recipes.Recipe.as_dict``): size, resize, crop,
    scale, per-channel mean and std."""
    from cxrbench.data.recipes import DEFAULT_INPUT, Recipe

    extra = {k: normalize.get(k, v) for k, v in DEFAULT_INPUT.items()}
    return Recipe.from_params({"image_size": image_size, "normalize": normalize, "input": extra}).as_dict()


def checkpoint_method(ckpt_dir: Path) -> str:
    """The registered method name of a checkpoint directory, read without building anything: ``config.json``'s
    ``method`` (written by ``pretrain``), else the ``method`` entry of ``encoder.pt``."""
    ckpt_dir = Path(ckpt_dir)
    config = ckpt_dir / "config.json"
    if config.is_file():
        try:
            method = json.loads(config.read_text()).get("method")
        except json.JSONDecodeError as err:
            raise ValueError(f"{config}: not valid JSON ({err})") from err
        if method:
            return str(method)
    enc_file = ckpt_dir / "encoder.pt"
    if not enc_file.is_file():
        raise FileNotFoundError(f"{enc_file}: missing; run `cxrbench pretrain` for this method first")
    return str(torch.load(enc_file, map_location="cpu", weights_only=False)["method"])


def load_pretrained(ckpt_dir: Path, *, full: bool = True) -> Pretrained:
    """Rebuild a checkpoint directory: the encoder (encoder.pt) and, for methods with a text tower, the whole model
    through the registry (``.vl``, eval mode); ``.full_state`` holds G2D's encoder-decoder. ``full=False`` loads the
    encoder alone (what frozen-encoder tasks use: it skips building the text tower)."""
    from cxrbench.methods.external import load_cxrbench_encoder

    ckpt_dir = Path(ckpt_dir)
    enc_file = ckpt_dir / "encoder.pt"
    if not enc_file.is_file():
        raise FileNotFoundError(f"{enc_file}: missing; run `cxrbench pretrain` for this method first")
    backbone, meta = load_cxrbench_encoder(enc_file)
    out = Pretrained(method=meta["method"], backbone=backbone.eval(), image_size=int(meta["image_size"]),
                     normalize={**meta["normalize"], **meta.get("input", {})})  # the input recipe rides along
    m_cls = METHODS.get(meta["method"])
    if full and (m_cls.has_text or m_cls.has_decoder):
        full = torch.load(ckpt_dir / "model.pt", map_location="cpu", weights_only=False)
        module = m_cls(full["params"]).build()
        module.load_state_dict(full["state_dict"])
        module.eval()
        out.vl = module if m_cls.has_text else None
        out.full_state = module.full_state() if hasattr(module, "full_state") else None
    return out
