import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from cxrbench.metrics.classification import accuracy, auroc, max_f1, multilabel_zero_shot


def test_auroc_hand_computed_and_macro():
    y = np.array([[0, 1], [0, 0], [1, 1], [1, 0]])
    s = np.array([[0.1, 0.8], [0.4, 0.3], [0.35, 0.2], [0.8, 0.9]])
    out = auroc(y, s, ["a", "b"])
    # label a: positives {0.35, 0.8} vs negatives {0.1, 0.4}: pairs won 3 of 4 -> 0.75
    assert out["AUROC/a"] == pytest.approx(0.75)
    # label b: positives {0.8, 0.2} vs negatives {0.3, 0.9}: pairs won 1 of 4 -> 0.25
    assert out["AUROC/b"] == pytest.approx(0.25)
    assert out["AUROC"] == pytest.approx(0.5)
    assert out["AUROC/undefined"] == []


def test_auroc_matches_sklearn_and_accepts_torch():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(50, 3))
    s = rng.random((50, 3))
    out = auroc(torch.from_numpy(y), torch.from_numpy(s), ["x", "y", "z"])
    for k, n in enumerate("xyz"):
        assert out[f"AUROC/{n}"] == pytest.approx(roc_auc_score(y[:, k], s[:, k]))
    assert out["AUROC"] == pytest.approx(roc_auc_score(y, s, average="macro"))


def test_auroc_single_class_label_is_nan_listed_and_excluded():
    y = np.array([[0, 1], [1, 1], [0, 1], [1, 1]])
    s = np.array([[0.1, 0.5], [0.9, 0.2], [0.2, 0.3], [0.7, 0.1]])
    out = auroc(y, s, ["ok", "allpos"])
    assert math.isnan(out["AUROC/allpos"])
    assert out["AUROC/undefined"] == ["allpos"]
    assert out["AUROC"] == pytest.approx(1.0)


def test_auroc_rejects_bad_shapes_and_labels():
    with pytest.raises(ValueError, match="len\\(names\\)"):
        auroc(np.zeros((4, 2)), np.zeros((4, 2)), ["one"])
    with pytest.raises(ValueError, match="0/1"):
        auroc(np.array([[0], [-1]]), np.zeros((2, 1)), ["u"])


def test_max_f1_hand_computed_with_reference_accuracy_rule():
    y = np.array([1, 0, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.1])
    # thresholds (>=): 0.9 -> F1 2/4=0.5; 0.8 -> 2*1/(2+1+2)=0.4; 0.7 -> 4/6; 0.4 -> 6/7; 0.3 -> 6/8; 0.1 -> 6/9
    out = max_f1(y, s)
    assert out["F1"] == pytest.approx(6 / 7)
    assert out["threshold"] == pytest.approx(0.4)
    # reference ACC uses score > 0.4: predicts {0.9, 0.8, 0.7} positive -> correct: idx0, idx2, idx4, idx5 = 4/6
    assert out["ACC"] == pytest.approx(4 / 6)
    # consistent rule uses >= 0.4: also predicts idx3 positive -> 5/6
    assert max_f1(y, s, acc_rule="consistent")["ACC"] == pytest.approx(5 / 6)


def test_max_f1_equals_brute_force_sklearn_f1():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.random(80), 2)  # ties on purpose
    best = max(f1_score(y, s >= t) for t in np.unique(s))
    out = max_f1(y, s)
    assert out["F1"] == pytest.approx(best)
    assert f1_score(y, s >= out["threshold"]) == pytest.approx(best)
    assert out["ACC"] == pytest.approx(accuracy_score(y, s > out["threshold"]))


def test_max_f1_no_positive_gives_nan():
    out = max_f1(np.zeros(5), np.linspace(0, 1, 5))
    assert all(math.isnan(v) for v in out.values())


def test_multilabel_zero_shot_macro_is_mean_of_per_label():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=(40, 3))
    s = rng.random((40, 3))
    names = ["p", "q", "r"]
    out = multilabel_zero_shot(y, s, names)
    for k, n in enumerate(names):
        single = max_f1(y[:, k], s[:, k])
        assert out[f"F1/{n}"] == single["F1"] and out[f"ACC/{n}"] == single["ACC"]
        assert out[f"threshold/{n}"] == single["threshold"]
    assert out["F1"] == pytest.approx(np.mean([out[f"F1/{n}"] for n in names]))
    assert out["ACC"] == pytest.approx(np.mean([out[f"ACC/{n}"] for n in names]))
    assert out["AUROC"] == pytest.approx(roc_auc_score(y, s, average="macro"))


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.5, 0.2, 0.9], [1.0, 0.0, 0.0]])
    assert accuracy(torch.tensor([0, 1, 0, 0]), logits) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="outside"):
        accuracy(np.array([0, 3, 0, 0]), logits)
