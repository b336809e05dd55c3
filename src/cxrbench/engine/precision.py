"""Which floating-point precision a run trains in: ``auto`` picks bf16 autocast only where the device runs bf16
natively, because emulated bf16 is far slower than fp32 (a 512 x 512 matmul on an AVX2-only CPU: 0.7 GFLOP/s in
bf16 against 36 GFLOP/s in fp32; ``tests/bench_engine.py`` records the step times of the machine it runs on).

Native bf16: a CUDA device for which ``torch.cuda.is_bf16_supported()`` holds (Ampere and later), or a CPU whose
``/proc/cpuinfo`` flags include ``avx512_bf16`` or ``amx_bf16``. An explicit ``bf16`` is honoured everywhere, with one
warning per process when the CPU emulates it.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
log = logging.getLogger(__name__)


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU in ``cpuinfo`` (empty when the file is absent, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(device: torch.device | str) -> bool:
    """True when ``device`` computes bf16 natively (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in NATIVE_CPU_FLAGS)
    return False


@functools.cache
def _warn_emulated(device_type: str) -> None:
    msg = (f"precision: bf16 on a {device_type} without native bf16 (CPU flags {'/'.join(NATIVE_CPU_FLAGS)} "
           "absent): torch emulates it, often tens of times slower than fp32; use precision: auto or fp32")
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` on a device with native bf16, else ``fp32``; ``fp32`` / ``bf16`` are kept (an emulated
    bf16 warns once per process and device type)."""
    if requested not in PRECISIONS:
        raise ValueError(f"engine.precision = {requested!r}; expected one of {PRECISIONS}")
    native = native_bf16(device)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        _warn_emulated(torch.device(device).type)
    return requested


def resolved_engine_params(engine_params: dict, *, device: str | None = None) -> dict:
    """A copy of an engine parameter dict with ``precision`` resolved on its device (``device`` key, default
    ``auto``) and ``precision_requested`` beside it: what a run's config.json records."""
    from cxrbench.engine.dist import resolve_device

    out = dict(engine_params)
    requested = str(out.get("precision", "fp32"))
    dev = resolve_device(device or str(out.get("device", "auto")))
    out["precision"], out["precision_requested"] = resolve_precision(requested, dev), requested
    return out
