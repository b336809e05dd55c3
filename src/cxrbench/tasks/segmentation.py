"""Semantic segmentation: a U-Net decoder (channels 256, 128, 64, 32, 16) trained on the frozen encoder's pyramid
(MGCA protocol). ``setting: encoder_decoder`` initialises the decoder from the method's pretrained decoder (G2D);
a method without one is NotApplicable. ``encoder_trainable: true`` updates a copy of the encoder together with the
decoder (G2D Table 7, task ``segmentation_ft``) at its own learning rate ``encoder_lr`` (null: the engine's lr).
SIIM trains on all positives plus as many negatives (drawn with the run's seed), intersected with the fraction file.
Inputs resized to ``image_size`` with shift-scale-rotate at train. The saved examples put test images with
ground-truth foreground first (``example_rows``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.metrics.segmentation import dice_reference, dice_strict
from cxrbench.models.necks import neck_for
from cxrbench.models.unet import REFERENCE_DECODER_CHANNELS, UNetDecoder
from cxrbench.registry import TASKS
from cxrbench.tasks import _predictions
from cxrbench.tasks._base import NotApplicable, Task
from cxrbench.tasks._common import (
    FeatureCache,
    FrozenEncoder,
    StoreDataset,
    batches,
    cached_pyramid,
    collate,
    device_of,
    encoder_fingerprint,
    engine_config,
    positive_rows,
    pyramid_bytes,
    resize,
    resolve,
    row_index,
    save_npz_atomic,
    seeded,
    segmentation_strides,
    shift_scale_rotate,
    task_image_size,
    to_input,
)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, *, focal_weight: float = 10.0, gamma: float = 2.0, smooth: float = 1.0
) -> torch.Tensor:
    """MGCA mixed loss. logits, target (B, 1, H, W). With p = sigmoid(logits), p_t = p if t else 1 - p:
    focal = mean_pixels -(1 - p_t)^gamma log p_t;  dice = (2 sum p t + smooth) / (sum p + sum t + smooth) over
    the batch;  loss = focal_weight * focal - log(dice)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    focal = ((1 - p_t) ** gamma * bce).mean()
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum() + smooth) / (p.sum() + target.sum() + smooth)
    return focal_weight * focal - torch.log(dice)


def balanced_train_rows(data: Any, fraction: int, seed: int) -> np.ndarray:
    """All positive train rows + an equal number of negatives (numpy Generator(seed)), then the rows of the
    ``fraction`` file among them (sorted)."""
    full = np.asarray(data.rows("train", 100), dtype=np.int64)
    pos = positive_rows(data, full)
    neg = np.setdiff1d(full, pos)
    chosen = np.random.default_rng(seed).choice(neg, size=min(len(pos), len(neg)), replace=False)
    balanced = np.union1d(pos, chosen)
    return np.intersect1d(balanced, np.asarray(data.rows("train", fraction), dtype=np.int64))


def decoder_state(full_state: dict[str, Any] | None, decoder: UNetDecoder) -> tuple[dict | None, str]:
    """The pretrained decoder tensors in ``full_state`` matching ``decoder`` (keys ``...decoder.<key>``), or
    (None, reason)."""
    if not full_state:
        return None, "the method's checkpoint has no full model state (no pretrained decoder)"
    sd = full_state.get("state_dict", full_state)
    if isinstance(sd.get("decoder"), dict):  # G2D's full_state: {"encoder": ..., "decoder": ..., "decoder_kwargs"}
        sd = {f"decoder.{k}": v for k, v in sd["decoder"].items()}
    own = decoder.state_dict()
    found: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if "decoder." not in key or not torch.is_tensor(value):
            continue
        sub = key.split("decoder.", 1)[1]
        if sub in own and own[sub].shape == value.shape:
            found[sub] = value
    if set(found) != set(own):
        return None, (
            f"no pretrained U-Net decoder matching {len(own)} tensors found in the full state "
            f"({len(found)} matched); encoder_decoder needs a method with a decoder such as G2D"
        )
    return found, ""


class TrainableEncoder(nn.Module):
    """A deep copy of the backbone, trained (gradients, BatchNorm statistics), plus the neck a ViT needs: the
    counterpart of ``FrozenEncoder`` for the encoder-updated setting; its weights are part of every checkpoint.

    forward(x (B, 3, H, W)) -> (pooled (B, D), pyramid [(B, C_j, H/t_j, W/t_j)] at ``out_strides`` t_j)."""

    def __init__(self, backbone: nn.Module, out_strides: tuple[int, ...], channels: int = 256) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone)  # the caller's encoder (shared by a job's runs) never changes
        for prm in self.backbone.parameters():
            prm.requires_grad_(True)
        self.neck = neck_for(self.backbone, out_strides, channels)  # native levels pass through (a ResNet)
        self.channels = self.neck.out_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.backbone(x)
        return out.pooled, self.neck(out.pyramid)


class SegmentationModel(nn.Module):
    """Encoder (frozen, or trainable with ``p["encoder_trainable"]``; + neck for a ViT) and U-Net decoder.
    forward(batch {"image", "mask"}) -> {"loss"}. ``param_groups`` gives the encoder its own lr."""

    def __init__(self, backbone: nn.Module, p: dict[str, Any], size: int, normalize: dict, seed: int) -> None:
        super().__init__()
        strides = segmentation_strides(backbone)
        encoder = TrainableEncoder if p.get("encoder_trainable", False) else FrozenEncoder
        self.encoder = encoder(backbone, strides, int(p.get("neck_channels", 256)))
        chans = tuple(p.get("decoder_channels", REFERENCE_DECODER_CHANNELS))
        self.decoder = UNetDecoder(self.encoder.channels, strides, chans)
        self.size, self.normalize, self.p = size, normalize, p
        self.gen = torch.Generator().manual_seed(seed)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The engine's optimiser groups: the backbone at ``encoder_lr`` (null: ``lr``), neck and decoder at ``lr``
        (frozen parameters are dropped by the engine)."""
        enc = list(self.encoder.backbone.parameters())
        ids = {id(q) for q in enc}
        rest = [q for q in self.parameters() if id(q) not in ids]
        enc_lr = self.p.get("encoder_lr")
        return [{"params": enc, "lr": float(lr if enc_lr is None else enc_lr), "weight_decay": weight_decay},
                {"params": rest, "lr": float(lr), "weight_decay": weight_decay}]

    def logits(self, image: torch.Tensor, levels: list[torch.Tensor] | None = None) -> torch.Tensor:
        """image (B, 1, size, size) in [0, 1] -> logits (B, 1, size, size). ``levels``: the frozen backbone's
        pyramid of these images from the feature cache (:class:`CachedPyramid`), used instead of the encoder."""
        if levels is not None:
            pyramid = self.encoder.from_backbone([level.to(device_of(self.decoder)) for level in levels])
        else:
            _, pyramid = self.encoder(to_input(image, self.normalize).to(device_of(self.decoder)))
        return self.decoder(pyramid, out_size=(self.size, self.size))

    def inputs(self, batch: dict[str, Any], train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = resize(batch["image"], self.size), resize(batch["mask"], self.size, "nearest")
        if train and self.p.get("augment", True):
            img, mask = shift_scale_rotate(img, mask, self.gen)
        return img, mask

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        img, mask = self.inputs(batch, self.training)
        levels = None if self.training and self.p.get("augment", True) else batch.get("levels")
        loss = segmentation_loss(
            self.logits(img, levels), mask.to(device_of(self.decoder)),
            focal_weight=float(self.p.get("focal_weight", 10.0)),
        )
        return {"loss": loss}


class CachedPyramid(StoreDataset):
    """Rows of a split as StoreDataset items ({"image", "mask", "row"}) plus "levels": the frozen backbone's pyramid
    [(C_i, h_i, w_i)] of each image from a feature-cache entry (:func:`cached_pyramid`, the resized view)."""

    def __init__(self, entry: dict[str, Any], store: Any, rows: np.ndarray, fields: tuple[str, ...]) -> None:
        super().__init__(store, rows, fields)
        idx = row_index(entry, self.rows)
        self.levels = [level[idx] for level in entry["levels"]]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**super().__getitem__(i), "levels": [level[i] for level in self.levels]}

    @staticmethod
    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        out = collate([{k: v for k, v in b.items() if k != "levels"} for b in batch])
        out["levels"] = [torch.stack([b["levels"][k] for b in batch]) for k in range(len(batch[0]["levels"]))]
        return out


def example_rows(masks: np.ndarray, k: int) -> np.ndarray:
    """Positions of up to ``k`` examples in ``masks`` (N, H, W): images with ground-truth foreground first, then
    those without, each group in test order (a figure of empty masks shows nothing)."""
    positive = np.asarray(masks).reshape(len(masks), -1).any(axis=1)
    order = np.concatenate([np.flatnonzero(positive), np.flatnonzero(~positive)])
    return order[:k].astype(np.int64)


@torch.no_grad()
def predict(model: SegmentationModel, dataset: StoreDataset, batch_size: int) -> tuple[np.ndarray, ...]:
    """(mean loss, prob (N, H, W), target (N, H, W), images (N, H, W)) on the whole ``dataset`` in order."""
    was = model.training
    model.eval()
    losses, probs, targets, images = [], [], [], []
    for batch in batches(dataset, batch_size):
        img, mask = model.inputs(batch, False)
        logits = model.logits(img, batch.get("levels")).cpu()
        losses.append(float(segmentation_loss(logits, mask)) * len(img))
        probs.append(torch.sigmoid(logits)[:, 0].numpy())
        targets.append(mask[:, 0].numpy())
        images.append(img[:, 0].numpy())
    model.train(was)
    n = max(len(dataset), 1)
    return sum(losses) / n, np.concatenate(probs), np.concatenate(targets), np.concatenate(images)


@TASKS.register("segmentation")
class Segmentation(Task):
    name = "segmentation"
    relative_cost = 10
    datasets = ("siim", "rsna")
    metric_forms = {
        "Dice@reference": "MGCA image-wise Dice at prob > 0.5: empty GT scores 1 if the prediction is empty else 0; "
        "mean over images of each test batch, then mean of batch means",
        "Dice@strict": "mean over test images of standard Dice, images with empty GT and empty prediction excluded",
        "Dice@strict_global": "global Dice pooled over all pixels of all test images",
    }

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        setting = params.get("setting", "frozen_encoder")
        if setting not in ("frozen_encoder", "encoder_decoder"):
            raise ValueError(f"evaluate.tasks.{self.name}.setting: {setting!r}; use frozen_encoder or encoder_decoder")
        self.requires_decoder = setting == "encoder_decoder"
        self.cache = FeatureCache(params.get("cache_dir"))  # the frozen pyramid of the test view (``cached_sets``)

    def check(self, pretrained: Any) -> None:
        super().check(pretrained)
        if self.requires_decoder:
            strides = segmentation_strides(pretrained.backbone)
            chans = tuple(self.params.get("decoder_channels", REFERENCE_DECODER_CHANNELS))
            probe = FrozenEncoder(pretrained.backbone, strides, int(self.params.get("neck_channels", 256)))
            state, reason = decoder_state(pretrained.full_state, UNetDecoder(probe.channels, strides, chans))
            if state is None:
                raise NotApplicable(f"segmentation encoder_decoder setting for method {pretrained.method!r}: {reason}")

    def cached_sets(self, model: SegmentationModel, data: Any, sets: dict, p: dict) -> dict:
        """With a frozen encoder the backbone's pyramid of the deterministic view is computed once per (encoder,
        split) through the feature cache and shared by every fraction, seed, epoch and setting: the validation and
        test splits always, the training split too when it is not augmented (``augment: false``). A trainable
        encoder, ``feature_cache: false``, or a split whose levels exceed ``feature_cache_max_gb`` streams images
        through the encoder instead (the same numbers, up to float rounding)."""
        if p.get("encoder_trainable", False) or not p.get("feature_cache", True):
            return sets
        backbone = model.encoder.backbone
        levels = list(range(len(backbone.pyramid_strides)))
        limit = float(p.get("feature_cache_max_gb", 4.0)) * 1e9
        cached = ["valid", "test"] if p.get("augment", True) else ["train", "valid", "test"]
        per_image = pyramid_bytes(backbone, model.size, model.normalize, levels)
        if max(len(data.rows(s, 100)) for s in cached) * per_image > limit:
            return sets
        fingerprint = encoder_fingerprint(backbone)
        out = dict(sets)
        for split in cached:
            entry = cached_pyramid(backbone, self.cache, data, split, size=model.size, normalize=model.normalize,
                                   levels=levels, batch_size=int(p.get("feature_batch_size", 64)),
                                   fingerprint=fingerprint)
            out[split] = CachedPyramid(entry, data, sets[split].rows, sets[split].fields)
        return out

    def train_rows(self, data: Any, fraction: int, seed: int, p: dict) -> np.ndarray:
        if str(data.name) in p.get("balanced_train_datasets", ["siim"]):
            rows = balanced_train_rows(data, fraction, seed)
        else:
            rows = np.asarray(data.rows("train", fraction), dtype=np.int64)
        if len(rows) == 0:
            raise ValueError(f"segmentation: dataset {data.name!r} fraction {fraction}% leaves no training image")
        return rows

    def run(self, pretrained: Any, data: Any, fraction: int, seed: int, out_dir: Path) -> dict[str, Any]:
        from cxrbench.engine import fit

        p = resolve(self.params, str(data.name), fraction)
        size = task_image_size(p, pretrained)
        fields = ("image", "mask")
        sets = {"train": StoreDataset(data, self.train_rows(data, fraction, seed, p), fields)}
        sets.update({s: StoreDataset(data, data.rows(s, 100), fields) for s in ("valid", "test")})
        self.n = {s: len(d) for s, d in sets.items()}
        with seeded(seed):
            model = SegmentationModel(pretrained.backbone, p, size, pretrained.normalize, seed)
        sets = self.cached_sets(model, data, sets, p)
        if p.get("setting", "frozen_encoder") == "encoder_decoder":
            model.decoder.load_state_dict(decoder_state(pretrained.full_state, model.decoder)[0])
        cfg = engine_config(p, monitor="val_loss", mode="min")
        eval_bs = int(getattr(cfg, "batch_size", 8))
        fit(
            model,
            sets["train"],
            cfg,
            Path(out_dir) / "train",
            seed=seed,
            collate_fn=getattr(sets["train"], "collate", collate),
            val_fn=lambda m: {"val_loss": predict(m, sets["valid"], eval_bs)[0]},
        )
        _, prob, target, images = predict(model, sets["test"], eval_bs)
        _predictions.segmentation(out_dir, sets["test"].rows, prob, target, batch_size=eval_bs)
        pick = example_rows(target, 4)
        save_npz_atomic(
            Path(out_dir) / "examples.npz",
            image=images[pick],
            mask=target[pick],
            prob=prob[pick],
            row=np.asarray(sets["test"].rows)[pick],
        )
        return {
            "Dice@reference": dice_reference(prob, target, batch_size=eval_bs),
            "Dice@strict": dice_strict(prob, target, mode="image"),
            "Dice@strict_global": dice_strict(prob, target, mode="global"),
        }
