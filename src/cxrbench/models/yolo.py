"""YOLOv3 detection head, loss and decoder for frozen-encoder detection (MGCA protocol, used by G2D).

Layout: the head takes the pyramid (C3, C4, C5) at strides (8, 16, 32) and returns one raw map per scale,
FINE TO COARSE, each (B, A * (5 + K), H_s, W_s) with A = 3 anchors and K classes; channel block a holds
(t_x, t_y, t_w, t_h, t_obj, t_cls_1..K) as logits / log-scales. Anchors are (w, h) in input pixels, listed per
scale fine to coarse. Boxes everywhere are (x1, y1, x2, y2) in input pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

COCO_ANCHORS_416: tuple[tuple[tuple[int, int], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
REFERENCE_ANCHORS_224: tuple[tuple[tuple[float, float], ...], ...] = tuple(
    tuple((w * 224 / 416, h * 224 / 416) for w, h in scale) for scale in COCO_ANCHORS_416
)

Anchors = Sequence[Sequence[Sequence[float]]]


def conv_bn_leaky(c_in: int, c_out: int, k: int) -> nn.Sequential:
    """k x k conv (no bias, 'same' padding) -> BatchNorm -> LeakyReLU(0.1)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)
    )


class _Scale(nn.Module):
    """One YOLOv3 scale: 5 conv-BN-leaky blocks (1x1 mid, 3x3 2mid, 1x1, 3x3, 1x1) whose output also feeds
    the next finer scale, then one 3x3 conv-BN-leaky (2 mid) and the 1x1 output conv (with bias)."""

    def __init__(self, c_in: int, mid: int, c_out: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            conv_bn_leaky(c_in, mid, 1), conv_bn_leaky(mid, 2 * mid, 3), conv_bn_leaky(2 * mid, mid, 1),
            conv_bn_leaky(mid, 2 * mid, 3), conv_bn_leaky(2 * mid, mid, 1),
        )
        self.head = conv_bn_leaky(mid, 2 * mid, 3)
        self.out = nn.Conv2d(2 * mid, c_out, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        branch = self.blocks(x)
        return self.out(self.head(branch)), branch


class YOLOv3Head(nn.Module):
    """YOLOv3 head on a 3-level pyramid.

    in_channels: (C3, C4, C5) channels at strides 8/16/32. widths: the 1x1 ("mid") width per scale, fine to
    coarse; the reference (Darknet/MGCA) uses (128, 256, 512). The coarse scale runs on C5; its branch goes
    through a 1x1 conv-BN-leaky to the next finer width, is upsampled x2 (nearest) and concatenated with C4,
    and likewise C4 -> C3. ``obj_prior``: initial objectness probability set through the output bias
    (logit(0.01); not in the reference, which keeps PyTorch's default init) so that the summed no-object loss
    of thousands of cells does not swamp the first updates; ``None`` keeps the default init.
    forward(pyramid) -> [out_s8, out_s16, out_s32], each (B, 3 (5 + K), H_s, W_s).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int = 1,
        anchors: Anchors = REFERENCE_ANCHORS_224,
        widths: Sequence[int] = (128, 256, 512),
        obj_prior: float | None = 0.01,
    ) -> None:
        super().__init__()
        if len(in_channels) != 3 or len(widths) != 3 or len(anchors) != 3:
            raise ValueError("YOLOv3Head needs 3 in_channels, widths and anchor groups (strides 8, 16, 32)")
        self.num_classes = num_classes
        self.anchors = tuple(tuple((float(w), float(h)) for w, h in scale) for scale in anchors)
        n_out = len(self.anchors[0]) * (5 + num_classes)
        c3, c4, c5 = in_channels
        w3, w4, w5 = widths
        self.scale5 = _Scale(c5, w5, n_out)
        self.lateral4 = conv_bn_leaky(w5, w4, 1)
        self.scale4 = _Scale(c4 + w4, w4, n_out)
        self.lateral3 = conv_bn_leaky(w4, w3, 1)
        self.scale3 = _Scale(c3 + w3, w3, n_out)
        if obj_prior is not None:
            logit = math.log(obj_prior / (1 - obj_prior))
            for scale in (self.scale3, self.scale4, self.scale5):
                with torch.no_grad():
                    scale.out.bias.view(len(self.anchors[0]), -1)[:, 4] = logit

    @staticmethod
    def _up_cat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = pyramid
        out5, b5 = self.scale5(c5)
        out4, b4 = self.scale4(self._up_cat(self.lateral4(b5), c4))
        out3, _ = self.scale3(self._up_cat(self.lateral3(b4), c3))
        return [out3, out4, out5]


def _hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    return int(img_size[0]), int(img_size[1])


def _split(out: torch.Tensor, n_anchors: int) -> torch.Tensor:
    """(B, A (5 + K), H, W) -> (B, A, H, W, 5 + K)."""
    b, c, h, w = out.shape
    if c % n_anchors:
        raise ValueError(f"output has {c} channels, not a multiple of {n_anchors} anchors")
    return out.view(b, n_anchors, c // n_anchors, h, w).permute(0, 1, 3, 4, 2)


def _decode_boxes(p: torch.Tensor, anchors: torch.Tensor, stride: tuple[float, float]) -> torch.Tensor:
    """(B, A, H, W, 5 + K) raw -> (B, A, H, W, 4) xyxy pixels: centre = (sigmoid(t_xy) + cell) * stride,
    size = anchor * exp(t_wh)."""
    h, w = p.shape[2:4]
    ys, xs = torch.arange(h, device=p.device), torch.arange(w, device=p.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    cx = (torch.sigmoid(p[..., 0]) + gx) * stride[1]
    cy = (torch.sigmoid(p[..., 1]) + gy) * stride[0]
    bw = torch.exp(p[..., 2]) * anchors[:, 0].view(1, -1, 1, 1)
    bh = torch.exp(p[..., 3]) * anchors[:, 1].view(1, -1, 1, 1)
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)


def _wh_iou(wh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(m, n) IoU of boxes and anchors sharing one centre; wh (m, 2), anchors (n, 2)."""
    inter = torch.minimum(wh[:, None], anchors[None]).prod(-1)
    return inter / (wh.prod(1)[:, None] + anchors.prod(1)[None, :] - inter)


def assign_targets(
    targets: Sequence[torch.Tensor],
    shapes: Sequence[tuple[int, int]],
    img_hw: tuple[int, int],
    anchors: torch.Tensor,
    num_classes: int,
    labels: Sequence[torch.Tensor] | None = None,
    assignment: str = "global",
) -> list[dict[str, torch.Tensor]]:
    """Per scale s: ``{"pos": (B, A, H, W) bool, "txy": (.., 2), "twh": (.., 2), "cls": (.., K)}``.

    A GT box (centre c, size g) goes to the anchor of highest centred IoU with g: over all 3 x 3 anchors
    (``assignment="global"``, standard YOLOv3, one positive per box) or, like the MGCA reference code, the
    best anchor of EACH scale (``"per_scale"``, three positives per box). The positive cell is
    (i, j) = floor(c / stride) and the targets are t_xy = c / stride - (i, j) in [0, 1) and
    t_wh = log(g / anchor). Two boxes claiming the same cell and anchor: the later one wins.
    anchors: (S, A, 2) pixels. targets[b]: (m_b, 4) xyxy pixels; labels[b]: (m_b,) class indices (default 0).
    """
    n_scales, n_anchors = anchors.shape[:2]
    bsz, dev = len(targets), anchors.device
    out = []
    for h, w in shapes:
        out.append({"pos": torch.zeros(bsz, n_anchors, h, w, dtype=torch.bool, device=dev),
                    "txy": torch.zeros(bsz, n_anchors, h, w, 2, device=dev),
                    "twh": torch.zeros(bsz, n_anchors, h, w, 2, device=dev),
                    "cls": torch.zeros(bsz, n_anchors, h, w, num_classes, device=dev)})
    flat = anchors.reshape(-1, 2)
    for b, boxes in enumerate(targets):
        boxes = torch.as_tensor(boxes, dtype=torch.float32, device=dev).reshape(-1, 4)
        wh = boxes[:, 2:] - boxes[:, :2]
        if (wh <= 0).any():
            raise ValueError(f"targets[{b}] holds a box with non-positive width or height: {boxes.tolist()}")
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        iou = _wh_iou(wh, flat).view(-1, n_scales, n_anchors)
        cls = labels[b] if labels is not None else torch.zeros(len(boxes), dtype=torch.long)
        for j in range(len(boxes)):
            if assignment == "global":
                best = int(iou[j].reshape(-1).argmax())
                picks = [(best // n_anchors, best % n_anchors)]
            elif assignment == "per_scale":
                picks = [(s, int(iou[j, s].argmax())) for s in range(n_scales)]
            else:
                raise ValueError(f"assignment must be 'global' or 'per_scale', got {assignment!r}")
            for s, a in picks:
                _set_target(out[s], b, a, centre[j], wh[j], anchors[s, a], img_hw, int(cls[j]))
    return out


def _set_target(t: dict, b: int, a: int, centre: torch.Tensor, wh: torch.Tensor, anchor: torch.Tensor,
                img_hw: tuple[int, int], cls: int) -> None:
    h, w = t["pos"].shape[2:]
    g = torch.stack([centre[0] * w / img_hw[1], centre[1] * h / img_hw[0]])  # centre in grid units
    i, j = min(max(int(g[0]), 0), w - 1), min(max(int(g[1]), 0), h - 1)
    t["pos"][b, a, j, i] = True
    t["txy"][b, a, j, i] = g - torch.tensor([i, j], dtype=g.dtype, device=g.device)
    t["twh"][b, a, j, i] = torch.log(wh / anchor)
    t["cls"][b, a, j, i] = 0.0
    t["cls"][b, a, j, i, cls] = 1.0


def _ignore_mask(boxes: torch.Tensor, targets: Sequence[torch.Tensor], thresh: float) -> torch.Tensor:
    """(B, A, H, W) bool: predicted box (B, A, H, W, 4) overlaps some GT of its image with IoU > thresh."""
    from torchvision.ops import box_iou

    ignore = torch.zeros(boxes.shape[:4], dtype=torch.bool, device=boxes.device)
    for b, gt in enumerate(targets):
        gt = torch.as_tensor(gt, dtype=boxes.dtype, device=boxes.device).reshape(-1, 4)
        if len(gt):
            ignore[b] = (box_iou(boxes[b].reshape(-1, 4), gt).amax(1) > thresh).view(boxes.shape[1:4])
    return ignore


def yolo_loss(
    outputs: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    *,
    img_size: int | Sequence[int],
    anchors: Anchors = REFERENCE_ANCHORS_224,
    ignore_thresh: float = 0.5,
    w_xy: float = 2.5,
    w_wh: float = 2.5,
    w_conf: float = 1.0,
    w_cls: float = 1.0,
    labels: Sequence[torch.Tensor] | None = None,
    assignment: str = "global",
) -> dict[str, torch.Tensor]:
    """YOLOv3 loss. outputs: head maps fine to coarse; targets[b]: (m_b, 4) xyxy pixels (m_b may be 0).

    With positives P (see :func:`assign_targets`), sigma the sigmoid, BCE(p, y) = -y log p - (1 - y) log(1 -
    p), and N the set of non-positive cells whose decoded predicted box has IoU <= ignore_thresh with every
    GT box of its image (cells above it are ignored for objectness), summed over scales and divided by batch
    size B:

        xy   = sum_P BCE(sigma(t^_x), t_x) + BCE(sigma(t^_y), t_y)
        wh   = sum_P (t^_w - log(g_w / a_w))^2 + (t^_h - log(g_h / a_h))^2
        conf = sum_P BCE(sigma(t^_o), 1) + sum_N BCE(sigma(t^_o), 0)
        cls  = sum_P sum_k BCE(sigma(t^_k), onehot_k)
        loss = w_xy xy + w_wh wh + w_conf conf + w_cls cls

    Differences from the MGCA reference code (kept out on purpose): it averages each term over ALL cells
    (masked products), weights the no-object term by 0.5, assigns every box at every scale and ignores by
    anchor rather than predicted-box IoU (``assignment="per_scale"`` restores the per-scale assignment).
    Returns ``{"loss", "xy", "wh", "conf", "cls"}`` (scalars; only "loss" is meant for backward).
    """
    img_hw = _hw(img_size)
    anc = torch.as_tensor(anchors, dtype=torch.float32, device=outputs[0].device)
    preds = [_split(o, anc.shape[1]) for o in outputs]
    num_classes = preds[0].shape[-1] - 5
    tgt = assign_targets(targets, [p.shape[2:4] for p in preds], img_hw, anc, num_classes, labels, assignment)
    bce = F.binary_cross_entropy_with_logits
    terms = dict.fromkeys(("xy", "wh", "conf", "cls"), outputs[0].new_zeros(()))
    for s, (p, t) in enumerate(zip(preds, tgt, strict=True)):
        stride = (img_hw[0] / p.shape[2], img_hw[1] / p.shape[3])
        with torch.no_grad():
            ignore = _ignore_mask(_decode_boxes(p.float(), anc[s], stride), targets, ignore_thresh)
        pos, neg = t["pos"], ~t["pos"] & ~ignore
        pp = p[pos]
        terms["xy"] = terms["xy"] + bce(pp[:, :2], t["txy"][pos], reduction="sum")
        terms["wh"] = terms["wh"] + ((pp[:, 2:4] - t["twh"][pos]) ** 2).sum()
        terms["conf"] = terms["conf"] + bce(pp[:, 4], torch.ones_like(pp[:, 4]), reduction="sum")
        terms["conf"] = terms["conf"] + bce(p[..., 4][neg], torch.zeros_like(p[..., 4][neg]), reduction="sum")
        terms["cls"] = terms["cls"] + bce(pp[:, 5:], t["cls"][pos], reduction="sum")
    bsz = outputs[0].shape[0]
    terms = {k: v / bsz for k, v in terms.items()}
    loss = w_xy * terms["xy"] + w_wh * terms["wh"] + w_conf * terms["conf"] + w_cls * terms["cls"]
    return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}


def mgca_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-wise greedy NMS exactly as MGCA's ``non_max_suppression`` (``mgca/utils/detection_utils.py``): per class,
    by decreasing score, keep a box and drop every remaining one whose IoU with it is >= ``iou_threshold``, the IoU
    in "+1 pixel" form (``bbox_iou``: widths x2 - x1 + 1, intersection min(x2) - max(x1) + 1, clamped at 0).

    boxes (n, 4) xyxy, scores (n,), labels (n,) -> kept indices (k,) in decreasing score. The +1 IoU of two boxes is
    the plain IoU of the boxes grown by 1 at x2 and y2, and ">= t" is "> the next double below t", so this runs as
    ``torchvision.ops.batched_nms`` (which drops IoU > t) on those boxes: batched, on the boxes' device.
    """
    grown = torch.cat([boxes[:, :2], boxes[:, 2:] + 1], dim=1)
    return batched_nms(grown, scores, labels, math.nextafter(float(iou_threshold), -math.inf))


@torch.no_grad()
def decode(
    outputs: Sequence[torch.Tensor],
    *,
    img_size: int | Sequence[int],
    anchors: Anchors = REFERENCE_ANCHORS_224,
    conf_threshold: float = 0.5,
    nms_iou: float = 0.5,
    max_boxes: int = 100,
) -> list[dict[str, torch.Tensor]]:
    """Head maps -> per-image detections ``{"boxes": (n, 4) xyxy pixels, "scores": (n,), "labels": (n,)}``.

    As MGCA's pipeline (``mgca/utils/yolo_loss.py`` ``YOLOLoss.forward`` without targets, then
    ``mgca/utils/detection_utils.py`` ``non_max_suppression``): a cell/anchor is kept when its objectness
    sigmoid(t_o) >= conf_threshold; its score is that objectness and its label the argmax class; boxes are NOT
    clipped to the image (MGCA clips nowhere, neither before NMS nor before the metric); :func:`mgca_nms` with
    ``nms_iou``; at most ``max_boxes`` highest scores (default 100, the most torchmetrics' ``MeanAveragePrecision``
    counts per image; MGCA's NMS itself has no cap).
    """
    img_hw = _hw(img_size)
    anc = torch.as_tensor(anchors, dtype=torch.float32, device=outputs[0].device)
    boxes, obj, cls = [], [], []
    for s, o in enumerate(outputs):
        p = _split(o.float(), anc.shape[1])
        boxes.append(_decode_boxes(p, anc[s], (img_hw[0] / p.shape[2], img_hw[1] / p.shape[3])).flatten(1, 3))
        obj.append(torch.sigmoid(p[..., 4]).flatten(1))
        cls.append(p[..., 5:].argmax(-1).flatten(1) if p.shape[-1] > 5 else torch.zeros_like(obj[-1]).long())
    boxes, obj, cls = torch.cat(boxes, 1), torch.cat(obj, 1), torch.cat(cls, 1)
    results = []
    for b in range(boxes.shape[0]):
        keep = obj[b] >= conf_threshold
        bx, sc, lb = boxes[b][keep], obj[b][keep], cls[b][keep]
        idx = mgca_nms(bx, sc, lb, nms_iou)[:max_boxes]
        results.append({"boxes": bx[idx], "scores": sc[idx], "labels": lb[idx]})
    return results
