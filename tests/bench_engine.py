"""Benchmark: one training step (forward + backward + AdamW) in bf16 autocast vs fp32 on CPU, as the engine runs it.

Run with ``pytest tests/bench_engine.py --benchmark-enable``. The benchmark table times the bf16 step; the fp32 step
runs in each round's untimed setup (so both see the same machine load) and ``extra_info`` holds both best-of-rounds
times, ``bf16_vs_fp32`` = t_bf16 / t_fp32 (< 1: bf16 faster), the CPU's bf16 flags and what ``precision: auto``
resolves to here. CPU bf16 speed depends on the instruction set (AVX512-BF16 / AMX), so the only assertion about speed
is that ``auto`` picks the faster of the two whenever they differ by more than 2x."""

import math

import pytest
import torch

from cxrbench.engine.precision import NATIVE_CPU_FLAGS, cpu_flags, resolve_precision
from cxrbench.models.backbones import build_backbone

CASES = [("resnet18", {}, 64), ("vit_small_patch16", {"img_size": 64}, 64)]
# the one speed assertion acts on a >2x difference (emulated bf16 without AVX512-BF16: a 512x512 matmul ~50x slower,
# issue 10): the best of three rounds after the warm-up decides it; five rounds took ~3 minutes on a loaded 2-core host
BATCH, ROUNDS = 8, 3


def _step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, bf16: bool):
    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x).pooled.float().pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    return step


@pytest.mark.benchmark
@pytest.mark.parametrize(("name", "kwargs", "size"), CASES, ids=[c[0] for c in CASES])
def test_bf16_vs_fp32_step(timed, benchmark, name, kwargs, size):
    torch.manual_seed(0)
    model = build_backbone(name, **kwargs).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    t32, t16 = [], []
    fp32 = timed(_step_fn(model, opt, x, bf16=False), t32)

    def reference() -> None:  # untimed setup of each round (must return None: no arguments for the target)
        fp32()

    loss = benchmark.pedantic(timed(_step_fn(model, opt, x, bf16=True), t16), setup=reference,
                              rounds=ROUNDS, warmup_rounds=1, iterations=1)
    fp32_s, bf16_s = min(t32[1:] or t32), min(t16[1:] or t16)  # best of rounds, warm-up round dropped
    benchmark.extra_info.update(backbone=name, batch=BATCH, image_size=size, threads=torch.get_num_threads(),
                                fp32_step_ms=round(1e3 * fp32_s, 1), bf16_step_ms=round(1e3 * bf16_s, 1),
                                bf16_vs_fp32=round(bf16_s / fp32_s, 3), auto_precision=resolve_precision("auto", "cpu"),
                                cpu_bf16_flags=sorted(set(NATIVE_CPU_FLAGS) & cpu_flags()))
    assert math.isfinite(loss)  # a NaN step would make the timing meaningless
    assert len(t16) == len(t32)  # every timed bf16 step was paired with an fp32 step
    ratio = bf16_s / fp32_s
    if ratio > 2 or ratio < 0.5:  # a clear difference: auto must have chosen the faster precision
        assert resolve_precision("auto", "cpu") == ("bf16" if ratio < 1 else "fp32"), benchmark.extra_info
