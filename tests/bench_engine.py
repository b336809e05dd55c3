"""Benchmark: one training step (forward + backward + AdamW) in fp32 vs bf16 autocast on CPU, as the engine runs it.

Run with ``pytest tests/bench_engine.py --benchmark-enable``; the step time is in the benchmark table and the
setting in ``extra_info``."""

import math

import pytest
import torch

from cxrbench.models.backbones import build_backbone

CASES = [("resnet18", {}, 64), ("vit_small_patch16", {"img_size": 64}, 64)]


@pytest.mark.benchmark
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(("name", "kwargs", "size"), CASES, ids=[c[0] for c in CASES])
def test_train_step_time(benchmark, name, kwargs, size, precision):
    torch.manual_seed(0)
    model = build_backbone(name, **kwargs).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(8, 3, size, size)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(x).pooled.float().pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    loss = benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update({"backbone": name, "precision": precision, "batch": 8, "image_size": size,
                                 "threads": torch.get_num_threads()})
    assert math.isfinite(loss)  # a NaN step would make the timing meaningless
