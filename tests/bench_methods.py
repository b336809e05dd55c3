"""Benchmarks (run with --benchmark-enable): per-method training-step time vs the bare backbone's forward/backward on
the same batch (overhead ratio), the pseudo-mask processor's share of a G2D step, and bf16 vs fp32 step time."""

import time

import pytest
import torch

from cxrbench.methods.pseudo_mask import pseudo_masks
from cxrbench.registry import METHODS

TEXT = {"name_or_path": "wordpiece-bert", "max_length": 32, "freeze_layers": 0, "vocab_size": 300,
        "hidden_size": 64, "num_layers": 2, "num_heads": 2}
DEMO = {
    "g2d": {"backbone": "resnet18", "image_size": 64, "text": TEXT, "warmup_global_steps": 0,
            "decoder_channels": [64, 32, 16, 16, 8]},
    "convirt": {"backbone": "resnet18", "image_size": 64, "text": TEXT},
    "mflag": {"backbone": "resnet18", "image_size": 64, "text": TEXT, "proj_hidden": 512, "embed_dim": 256},
    "raddino": {"backbone": "vit_tiny_patch16", "backbone_kwargs": {"img_size": 64},
                "crops": {"global_size": 64, "local_size": 32, "n_local": 4}, "prototypes": 1024,
                "head_hidden": 256, "head_bottleneck": 64},
}
WORDS = "no acute process small left pleural effusion right lower lobe pneumonia cardiomegaly edema".split()


def _batch(n=16):
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8)) for i in range(n)]
    return {"image": torch.rand(n, 1, 64, 64, generator=g), "text": texts}


def _time(fn, reps=3):
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def _step(module, batch, dtype=None):
    def run():
        module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            loss = module(batch)["loss"]
        loss.float().backward()
    return run


@pytest.mark.benchmark
@pytest.mark.parametrize("name", sorted(DEMO))
def test_step_overhead(benchmark, name):
    batch = _batch()
    module = METHODS.get(name)(DEMO[name]).build(corpus=batch["text"]).train()
    size = DEMO[name].get("image_size") or DEMO[name]["crops"]["global_size"]
    x = torch.rand(16, 3, size, size)

    def bare():
        module.encoder.zero_grad(set_to_none=True)
        module.encoder(x).pooled.sum().backward()

    t_bare = _time(bare)
    t_bf16 = _time(_step(module, batch, torch.bfloat16), reps=2)
    benchmark.pedantic(_step(module, batch), rounds=3, iterations=1, warmup_rounds=1)
    t_step = benchmark.stats.stats.mean
    benchmark.extra_info.update(bare_backbone_s=t_bare, step_s=t_step, overhead_ratio=t_step / t_bare,
                                bf16_step_s=t_bf16, bf16_vs_fp32=t_bf16 / t_step)


@pytest.mark.benchmark
def test_pseudo_mask_share_of_g2d_step(benchmark):
    batch = _batch()
    module = METHODS.get("g2d")(DEMO["g2d"]).build(corpus=batch["text"]).train()
    t_step = _time(_step(module, batch))
    attn = torch.rand(16, 4, 4)
    images = batch["image"]
    benchmark.pedantic(lambda: pseudo_masks(attn, images), rounds=5, iterations=1, warmup_rounds=1)
    t_pm = benchmark.stats.stats.mean
    benchmark.extra_info.update(pseudo_mask_s=t_pm, g2d_step_s=t_step, pseudo_mask_share=t_pm / t_step)
