import math

import pytest
import torch
from torch import nn

from cxrbench.models.yolo import (
    REFERENCE_ANCHORS_224,
    YOLOv3Head,
    assign_targets,
    decode,
    mgca_nms,
    yolo_loss,
)

ANC = torch.tensor(REFERENCE_ANCHORS_224)
GT = torch.tensor([[85.0, 30.0, 115.0, 90.0]])  # centre (100, 60), size 30 x 60 -> scale 1 (stride 16), anchor 2


def _logit(p):
    return math.log(p / (1 - p))


def _blank(batch=1, fill=-20.0, k=1):
    """Raw outputs fine to coarse for a 224 input: objectness logits = fill, everything else 0."""
    outs = []
    for size in (28, 14, 7):
        o = torch.zeros(batch, 3, 5 + k, size, size)
        o[:, :, 4] = fill
        outs.append(o)
    return outs


def _flat(outs):
    return [o.reshape(o.shape[0], -1, o.shape[3], o.shape[4]) for o in outs]


def _plant(outs, s, a, j, i, tx, ty, tw, th, obj, cls=20.0):
    outs[s][:, a, :5, j, i] = torch.tensor([_logit(tx), _logit(ty), tw, th, obj])
    outs[s][:, a, 5:, j, i] = cls


def _gt_targets():
    tw = math.log(30 / (59 * 224 / 416))
    th = math.log(60 / (119 * 224 / 416))
    return 0.25, 0.75, tw, th


def test_reference_anchor_values():
    assert REFERENCE_ANCHORS_224[0][0] == pytest.approx((10 * 224 / 416, 13 * 224 / 416))
    assert REFERENCE_ANCHORS_224[0][0] == pytest.approx((5.384615, 7.0))
    assert REFERENCE_ANCHORS_224[1][2] == pytest.approx((31.769231, 64.076923))
    assert REFERENCE_ANCHORS_224[2][2] == pytest.approx((200.846154, 175.538462))


def test_head_shapes_strides_and_structure():
    head = YOLOv3Head((16, 32, 64), num_classes=2, widths=(8, 16, 32))
    pyr = [torch.randn(2, 16, 28, 28), torch.randn(2, 32, 14, 14), torch.randn(2, 64, 7, 7)]
    outs = head(pyr)
    assert [tuple(o.shape) for o in outs] == [(2, 21, 28, 28), (2, 21, 14, 14), (2, 21, 7, 7)]
    assert [224 // o.shape[-1] for o in outs] == [8, 16, 32]
    for scale, mid in ((head.scale3, 8), (head.scale4, 16), (head.scale5, 32)):
        convs = [m for m in scale.modules() if isinstance(m, nn.Conv2d)]
        assert [c.kernel_size[0] for c in convs] == [1, 3, 1, 3, 1, 3, 1]
        assert [c.out_channels for c in convs[:6]] == [mid, 2 * mid, mid, 2 * mid, mid, 2 * mid]
        assert sum(isinstance(m, nn.BatchNorm2d) for m in scale.modules()) == 6
        assert all(m.negative_slope == 0.1 for m in scale.modules() if isinstance(m, nn.LeakyReLU))
        assert scale.out.bias.detach().view(3, 7)[:, 4].tolist() == pytest.approx([_logit(0.01)] * 3)
    assert head.scale4.blocks[0][0].in_channels == 32 + 16  # C4 + upsampled lateral
    assert head.scale3.blocks[0][0].in_channels == 16 + 8


def test_single_gt_assignment_exact_targets():
    (t,) = [assign_targets([GT], [(28, 28), (14, 14), (7, 7)], (224, 224), ANC, 1)]
    assert [int(x["pos"].sum()) for x in t] == [0, 1, 0]
    assert t[1]["pos"][0, 2, 3, 6]
    tx, ty, tw, th = _gt_targets()
    assert t[1]["txy"][0, 2, 3, 6].tolist() == pytest.approx([tx, ty])
    assert t[1]["twh"][0, 2, 3, 6].tolist() == pytest.approx([tw, th])
    assert t[1]["cls"][0, 2, 3, 6].tolist() == [1.0]
    per_scale = assign_targets([GT], [(28, 28), (14, 14), (7, 7)], (224, 224), ANC, 1, assignment="per_scale")
    assert [int(x["pos"].sum()) for x in per_scale] == [1, 1, 1]
    assert per_scale[0]["pos"][0, 2, 7, 12] and per_scale[2]["pos"][0, 0, 1, 3]  # best of 3 per scale


def test_loss_without_gt_has_only_conf_term():
    outs = _flat(_blank(batch=2, fill=0.0))
    out = yolo_loss(outs, [torch.zeros(0, 4), torch.zeros(0, 4)], img_size=224)
    assert out["xy"] == 0 and out["wh"] == 0 and out["cls"] == 0
    n_cells = 3 * (28 * 28 + 14 * 14 + 7 * 7)
    assert out["conf"].item() == pytest.approx(n_cells * math.log(2), rel=1e-5)  # per image: sum BCE(0.5, 0)
    assert out["loss"].item() == pytest.approx(out["conf"].item(), rel=1e-6)


def test_loss_perfect_prediction_leaves_only_xy_entropy():
    tx, ty, tw, th = _gt_targets()
    raw = _blank()
    _plant(raw, 1, 2, 3, 6, tx, ty, tw, th, obj=20.0)
    out = yolo_loss(_flat(raw), [GT], img_size=224)
    entropy = -(tx * math.log(tx) + (1 - tx) * math.log(1 - tx)) - (ty * math.log(ty) + (1 - ty) * math.log(1 - ty))
    assert out["xy"].item() == pytest.approx(entropy, rel=1e-5)
    assert out["wh"].item() == pytest.approx(0.0, abs=1e-10)
    assert out["conf"].item() < 1e-5 and out["cls"].item() < 1e-7
    assert out["loss"].item() == pytest.approx(2.5 * out["xy"] + 2.5 * out["wh"] + out["conf"] + out["cls"])


def test_loss_wh_is_squared_log_error_and_weights_apply():
    tx, ty, tw, th = _gt_targets()
    raw = _blank()
    _plant(raw, 1, 2, 3, 6, tx, ty, tw + 0.3, th - 0.2, obj=20.0)
    out = yolo_loss(_flat(raw), [GT], img_size=224, w_xy=0.0, w_wh=1.0, w_conf=0.0, w_cls=0.0)
    assert out["wh"].item() == pytest.approx(0.3**2 + 0.2**2, rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["wh"].item())


def test_ignore_mask_spares_good_non_positive_boxes():
    tx, ty, tw, th = _gt_targets()
    base = _blank()
    _plant(base, 1, 2, 3, 6, tx, ty, tw, th, obj=20.0)
    conf0 = yolo_loss(_flat(base), [GT], img_size=224)["conf"].item()
    # anchor 1 of the same cell predicts the GT box exactly with objectness 0.5: IoU 1 > 0.5 -> ignored
    good = [o.clone() for o in base]
    _plant(good, 1, 1, 3, 6, tx, ty, math.log(30 / (62 * 224 / 416)), math.log(60 / (45 * 224 / 416)), obj=0.0)
    assert yolo_loss(_flat(good), [GT], img_size=224)["conf"].item() == pytest.approx(conf0, abs=1e-6)
    # the same objectness on a tiny box elsewhere is a negative: + BCE(0.5, 0) = ln 2
    bad = [o.clone() for o in base]
    _plant(bad, 1, 1, 10, 10, 0.5, 0.5, -3.0, -3.0, obj=0.0)
    assert yolo_loss(_flat(bad), [GT], img_size=224)["conf"].item() == pytest.approx(conf0 + math.log(2), rel=1e-5)


def test_decode_recovers_planted_box_and_applies_nms():
    tx, ty, tw, th = _gt_targets()
    raw = _blank()
    _plant(raw, 1, 2, 3, 6, tx, ty, tw, th, obj=5.0)
    _plant(raw, 1, 2, 3, 7, 0.05, ty, tw, th, obj=3.0)  # same box shifted 12.8 px: IoU 0.40 -> kept
    a1 = (62 * 224 / 416, 45 * 224 / 416)
    dup = (math.log(30 / a1[0]) - 0.1, math.log(60 / a1[1]))  # 27.1 x 60 box, IoU 0.90 -> suppressed
    _plant(raw, 1, 1, 3, 6, tx, ty, *dup, obj=2.0)
    _plant(raw, 2, 0, 5, 5, 0.5, 0.5, 0.0, 0.0, obj=0.0)  # objectness 0.5: exactly at threshold -> kept
    (det,) = decode(_flat(raw), img_size=224, conf_threshold=0.5, nms_iou=0.5)
    assert len(det["boxes"]) == 3
    assert det["boxes"][0].tolist() == pytest.approx(GT[0].tolist(), abs=1e-4)
    assert det["scores"].tolist() == pytest.approx([torch.sigmoid(torch.tensor(v)).item() for v in (5.0, 3.0, 0.0)])
    assert det["boxes"][2].tolist() == pytest.approx([176 - 31.2307692, 176 - 24.2307692, 176 + 31.2307692,
                                                      176 + 24.2307692], abs=1e-4)
    assert det["labels"].tolist() == [0, 0, 0]
    (top,) = decode(_flat(raw), img_size=224, conf_threshold=0.5, max_boxes=1)
    assert len(top["boxes"]) == 1 and top["scores"][0] == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())
    (strict,) = decode(_flat(raw), img_size=224, conf_threshold=0.9)
    assert len(strict["boxes"]) == 2


def test_decode_does_not_clip_and_handles_empty_images():
    raw = _blank(batch=2)
    _plant(raw, 2, 2, 0, 0, 0.5, 0.5, 1.0, 1.0, obj=4.0)  # huge box at the corner: centre (16, 16), anchor 2 x e
    dets = decode(_flat(raw), img_size=224)
    w, h = math.e * 373 * 224 / 416, math.e * 326 * 224 / 416
    assert dets[0]["boxes"][0].tolist() == pytest.approx([16 - w / 2, 16 - h / 2, 16 + w / 2, 16 + h / 2], rel=1e-5)
    assert dets[0]["boxes"].min() < -200 and dets[0]["boxes"].max() > 224 + 50  # as MGCA: never clipped
    assert len(dets[1]["boxes"]) == 1  # both images share the planted cell
    empty = decode(_flat(_blank()), img_size=224)
    assert empty[0]["boxes"].shape == (0, 4)


def _mgca_greedy(boxes, scores, thr):
    """MGCA's non_max_suppression for one class, re-derived in plain Python: sort by score, keep the first, drop
    every remaining box whose +1-pixel IoU with it is >= thr."""
    def iou1(a, b):
        iw = max(min(a[2], b[2]) - max(a[0], b[0]) + 1, 0.0)
        ih = max(min(a[3], b[3]) - max(a[1], b[1]) + 1, 0.0)
        inter = iw * ih
        area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
        return inter / (area(a) + area(b) - inter + 1e-16)

    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    while order:
        i, order = order[0], order[1:]
        kept.append(i)
        order = [j for j in order if iou1(boxes[i], boxes[j]) < thr]
    return kept


def test_mgca_nms_plus_one_iou_and_suppression_at_threshold():
    # +1-pixel IoU of [0,0,9,9] (area 100) and [0,0,9,4] (area 50): 50 / 100 = 0.5 exactly -> suppressed (>=);
    # the plain IoU is 36 / 81 = 0.44, which torchvision's nms alone would keep
    boxes = torch.tensor([[0.0, 0, 9, 9], [0, 0, 9, 4], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.zeros(3, dtype=torch.long)
    assert mgca_nms(boxes, scores, labels, 0.5).tolist() == [0, 2]
    assert mgca_nms(boxes, scores, labels, 0.51).tolist() == [0, 1, 2]
    assert mgca_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1, 2]  # class-wise


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mgca_nms_equals_greedy_reference_on_random_boxes(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 60, (40, 2), generator=g).float()
    wh = torch.randint(3, 40, (40, 2), generator=g).float()
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(40, generator=g)
    for thr in (0.3, 0.5):
        ref = _mgca_greedy(boxes.tolist(), scores.tolist(), thr)
        assert mgca_nms(boxes, scores, torch.zeros(40, dtype=torch.long), thr).tolist() == ref


def test_decode_passes_more_than_ten_detections():
    raw = _blank()
    for i in range(12):  # 12 separate small boxes on the stride-8 grid, objectness decreasing
        _plant(raw, 0, 0, 2 * i + 1, 2 * (i % 6) + 1, 0.5, 0.5, 0.0, 0.0, obj=3.0 - 0.1 * i)
    (det,) = decode(_flat(raw), img_size=224)
    assert len(det["boxes"]) == 12
    assert det["scores"].tolist() == pytest.approx([torch.sigmoid(torch.tensor(3.0 - 0.1 * i)).item()
                                                     for i in range(12)])


def test_tiny_head_overfits_one_image():
    g = torch.Generator().manual_seed(0)
    pyr = [torch.randn(1, 8, 28, 28, generator=g), torch.randn(1, 8, 14, 14, generator=g),
           torch.randn(1, 8, 7, 7, generator=g)]
    torch.manual_seed(0)
    head = YOLOv3Head((8, 8, 8), widths=(8, 8, 8))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = yolo_loss(head(pyr), [GT], img_size=224)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    (det,) = decode(head(pyr), img_size=224, max_boxes=10)
    assert loss.item() < 0.2 * first
    from torchvision.ops import box_iou

    assert len(det["boxes"]) >= 1 and box_iou(det["boxes"][:1], GT).item() > 0.5


def test_multiclass_labels_and_non_square_input():
    shapes = [(28, 20), (14, 10), (7, 5)]  # input 224 (H) x 160 (W)
    boxes = torch.tensor([[40.0, 100.0, 80.0, 120.0]])  # centre (60, 110), 40 x 20 -> scale 1, anchor 1
    t = assign_targets([boxes], shapes, (224, 160), ANC, 3, labels=[torch.tensor([2])])
    assert t[1]["pos"][0, 1, 6, 3]  # row floor(110 / 16) = 6, column floor(60 / 16) = 3
    assert t[1]["cls"][0, 1, 6, 3].tolist() == [0.0, 0.0, 1.0]
    assert t[1]["txy"][0, 1, 6, 3].tolist() == pytest.approx([60 / 16 - 3, 110 / 16 - 6])
    with pytest.raises(ValueError, match="non-positive"):
        assign_targets([torch.tensor([[5.0, 5.0, 5.0, 9.0]])], shapes, (224, 160), ANC, 1)
