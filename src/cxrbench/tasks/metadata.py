"""Patient metadata from the frozen encoder: sex, age and age group predicted linearly from the pooled feature.

RAD-DINO (Pérez-García et al., "Exploring scalable medical image encoders beyond text supervision", Nature Machine
Intelligence 2025, arXiv 2401.10815) evaluates what language supervision leaves out: its section on image features
and patient medical records shows that sex and age, which reports rarely mention, are predicted from the frozen
image features of RAD-DINO better than from those of language-supervised encoders. This task measures the same
thing on the benchmark's datasets (CheXpert ``Sex`` / ``Age``, NIH ``Patient Gender`` / ``Patient Age``: the
store's ``sex_female`` / ``age_years``, ``cxrbench.data.demographics``), with the splits and training fractions
of every other task. The paper's text could not be consulted from this machine: the protocol below is stated as
this task's own choice wherever it is not the linear-probe protocol the other tasks already follow.

- Features: the linear probe's (``cxrbench.tasks.linear.LinearProbe.features``: deterministic resize + centre
  crop, the encoder's normalisation, the same on-disk cache, so a run after ``linear`` on CheXpert reads them back).
- Models (scikit-learn, deterministic, seconds at most): features standardised on the training rows; sex:
  ``LogisticRegression`` (L2, lbfgs); age: ``Ridge`` on years; age group: multinomial ``LogisticRegression`` on
  the groups of ``age_bins`` (``[lo, hi)`` years). A closed-form / convex fit needs no epochs, learning rate or seed,
  so one seed is run (``seeds: [0]``). The regularisation (``logistic_C``, ``ridge_alpha`` grids) is chosen on the
  validation split by its loss (log-loss, mean squared error), as the linear probe early-stops on validation loss;
  the model is then the training-rows fit at that value.
- Metrics on the test split: ``sex/AUROC`` (female = positive), ``age/MAE`` (years), ``age/R2``
  (``sklearn.metrics.r2_score``), ``age_group/AUROC`` (one-vs-rest, macro over the groups with both classes in the
  test split; ``age_group/AUROC/<lo>-<hi>`` per group), each with a percentile-bootstrap 95% interval over test images
  (``<metric>_low`` / ``<metric>_high``, ``bootstrap.resamples`` / ``bootstrap.seed``).
- Unknown values (sex ``Unknown`` or blank, age blank / 0 / an entry error) drop the image from that target only;
  ``n`` in metrics.json counts the images used and dropped per split and target.

Privacy: nothing per image leaves the run (no predictions.npz, no examples, nothing logged): only the metrics and
counts above, so the bootstrap interval is computed here rather than by the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.registry import TASKS
from cxrbench.tasks._base import Task
from cxrbench.tasks._common import resolve

FORMS = {
    "sex/AUROC": "sklearn roc_auc_score of a logistic regression's P(female) on the test images of known sex",
    "age/MAE": "mean absolute error in years of a ridge regression on the test images of known age",
    "age/R2": "sklearn r2_score of the ridge regression's age on the test images of known age",
    "age_group/AUROC": "one-vs-rest AUROC of a multinomial logistic regression over the age_bins groups, macro "
                       "mean over the groups with both classes in the test split",
    "<metric>_low/_high": "95% percentile bootstrap over test images (bootstrap.resamples, bootstrap.seed)",
}


# ------------------------------------------------------------------------------------------------ metrics


class Resampled:
    """A metric ``fn(pred (N,), y (N,)) -> float`` with its bootstrap form ``resampled(pred, y, idx (B, N)) -> (B,)``
    (the fast path of ``cxrbench.metrics.stats.bootstrap_ci``)."""

    def __init__(self, fn: Callable, resampled: Callable) -> None:
        self.fn, self.resampled = fn, resampled

    def __call__(self, pred: Any, y: Any) -> float:
        return self.fn(pred, y)


def _mae(pred: Any, y: Any) -> float:
    """Mean |pred - y| over (N,) arrays (``nan`` when empty)."""
    return float(np.mean(np.abs(np.asarray(pred, float) - np.asarray(y, float)))) if len(y) else math.nan


def _r2(pred: Any, y: Any) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (``sklearn.metrics.r2_score``); ``nan`` for fewer than 2
    values or a constant ``y``."""
    from sklearn.metrics import r2_score

    y = np.asarray(y, float)
    return float(r2_score(y, pred)) if len(y) >= 2 and np.ptp(y) > 0 else math.nan


def _r2_resampled(pred: Any, y: Any, idx: np.ndarray) -> np.ndarray:
    """(B,) R^2 of each resample: 1 - sum (y - pred)^2 / sum (y - mean y)^2 over the drawn images."""
    p, t = np.asarray(pred, float)[idx], np.asarray(y, float)[idx]
    tot = ((t - t.mean(1, keepdims=True)) ** 2).sum(1)
    res = ((t - p) ** 2).sum(1)
    return np.divide(tot - res, tot, out=np.full(len(idx), np.nan), where=tot > 0)


mae = Resampled(_mae, lambda pred, y, idx: np.abs(np.asarray(pred, float) - np.asarray(y, float))[idx].mean(1))
r2 = Resampled(_r2, _r2_resampled)


def age_groups(age: np.ndarray, bins: Sequence[float]) -> np.ndarray:
    """int (N,) group index of each age: group g holds bins[g] <= age < bins[g + 1]; -1 outside every group."""
    edges = np.asarray(bins, dtype=float)
    g = np.searchsorted(edges, np.asarray(age, float), side="right") - 1
    return np.where((g >= 0) & (g < len(edges) - 1), g, -1)


def group_names(bins: Sequence[float]) -> list[str]:
    """"lo-hi" per group; the edges must increase (at least 2 groups), else a ValueError naming the key."""
    if len(bins) < 3 or any(b <= a for a, b in zip(bins[:-1], bins[1:], strict=True)):
        raise ValueError(f"evaluate.tasks.metadata.age_bins = {list(bins)}: expected at least 3 increasing edges "
                         "in years, e.g. [0, 40, 60, 80, 200]")
    return [f"{lo:g}-{hi:g}" for lo, hi in zip(bins[:-1], bins[1:], strict=True)]


def with_interval(name: str, value: float, fn: Callable, scores: np.ndarray, targets: np.ndarray,
                  boot: Mapping[str, Any]) -> dict[str, float]:
    """{name: value, name_low, name_high}: the percentile bootstrap (``cxrbench.metrics.stats.bootstrap_ci``)."""
    from cxrbench.metrics.stats import bootstrap_ci

    if not len(targets) or not math.isfinite(value):
        return {name: value, f"{name}_low": math.nan, f"{name}_high": math.nan}
    ci = bootstrap_ci(scores, targets, fn, resamples=int(boot["resamples"]), seed=int(boot["seed"]))
    return {name: value, f"{name}_low": ci["low"], f"{name}_high": ci["high"]}


# ------------------------------------------------------------------------------------------------ models


class Constant:
    """A model for a training set with a single class: the class frequencies (AUROC 0.5 by ties)."""

    def __init__(self, classes: np.ndarray, k: int) -> None:
        self.p = np.bincount(classes.astype(int), minlength=k) / max(len(classes), 1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.tile(self.p, (len(x), 1))


def _proba(model: Any, x: np.ndarray, k: int) -> np.ndarray:
    """(N, k) float64 class probabilities summing to 1; classes the model never saw get 0."""
    p = np.asarray(model.predict_proba(x), dtype=np.float64)
    if not isinstance(model, Constant):
        full = np.zeros((len(x), k))
        full[:, model.classes_.astype(int)] = p
        p = full
    return p / np.clip(p.sum(1, keepdims=True), 1e-300, None)


def fit_classifier(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, k: int, p: Mapping) -> Any:
    """L2 logistic regression (k classes, y int (N,)) at the ``logistic_C`` value of least validation log-loss
    (the first value without validation rows; a single training class: :class:`Constant`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    if len(np.unique(y)) < 2:
        return Constant(y, k)
    best, best_loss = None, math.inf
    for c in p["logistic_C"]:
        model = LogisticRegression(C=float(c), max_iter=int(p.get("max_iter", 1000))).fit(x, y)
        if not len(yv):
            return model
        loss = log_loss(yv, _proba(model, xv, k), labels=list(range(k)))
        if loss < best_loss:
            best, best_loss = model, loss
    return best


def fit_regressor(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, p: Mapping) -> Any:
    """Ridge regression of y (N,) at the ``ridge_alpha`` value of least validation mean squared error."""
    from sklearn.linear_model import Ridge

    best, best_loss = None, math.inf
    for a in p["ridge_alpha"]:
        model = Ridge(alpha=float(a)).fit(x, y)
        if not len(yv):
            return model
        loss = float(np.mean((model.predict(xv) - yv) ** 2))
        if loss < best_loss:
            best, best_loss = model, loss
    return best


# ------------------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Target:
    """One predicted quantity: the store column it comes from, how a known value becomes the model's target
    (``encode``: values (N,) -> (targets (N,), usable (N,) bool)) and how it is fitted and scored (``evaluate``)."""

    name: str
    column: str
    encode: Callable[[np.ndarray, Mapping], tuple[np.ndarray, np.ndarray]]
    evaluate: Callable[[dict, Mapping], dict[str, Any]]


def _known(values: np.ndarray, _: Mapping) -> tuple[np.ndarray, np.ndarray]:
    return values, np.isfinite(values)


def _grouped(values: np.ndarray, p: Mapping) -> tuple[np.ndarray, np.ndarray]:
    g = age_groups(np.nan_to_num(values, nan=-1.0), p["age_bins"])
    return g, np.isfinite(values) & (g >= 0)


def evaluate_sex(xy: dict, p: Mapping) -> dict[str, Any]:
    """xy: {split: (features (N, D), targets (N,) 1 female / 0 male)}."""
    from cxrbench.metrics.classification import auroc

    y = xy["test"][1].astype(int)
    model = fit_classifier(*xy["train"], *xy["valid"], 2, p)
    score = _proba(model, xy["test"][0], 2)[:, 1:]
    value = auroc(y[:, None], score, ["sex"])["AUROC"] if len(y) else math.nan
    return with_interval("sex/AUROC", value, "auroc", score, y[:, None].astype(float), p["bootstrap"])


def evaluate_age(xy: dict, p: Mapping) -> dict[str, Any]:
    """xy: {split: (features (N, D), age in years (N,))}."""
    model = fit_regressor(*xy["train"], *xy["valid"], p) if len(xy["train"][1]) else None
    y = xy["test"][1]
    pred = model.predict(xy["test"][0]) if model is not None and len(y) else np.zeros(len(y))
    out = with_interval("age/MAE", mae(pred, y) if model is not None else math.nan, mae, pred, y, p["bootstrap"])
    return {**out, **with_interval("age/R2", r2(pred, y) if model is not None else math.nan, r2, pred, y,
                                   p["bootstrap"])}


def evaluate_age_group(xy: dict, p: Mapping) -> dict[str, Any]:
    """xy: {split: (features (N, D), group index (N,))}; one-vs-rest AUROC per group of ``age_bins``."""
    from cxrbench.metrics.classification import auroc

    names, y = group_names(p["age_bins"]), xy["test"][1].astype(int)
    model = fit_classifier(*xy["train"], *xy["valid"], len(names), p)
    score = _proba(model, xy["test"][0], len(names))
    onehot = np.eye(len(names))[y] if len(y) else np.zeros((0, len(names)))
    per = auroc(onehot, score, names) if len(y) else {"AUROC": math.nan}
    out = with_interval("age_group/AUROC", per["AUROC"], "auroc", score, onehot, p["bootstrap"])
    return {**out, **{f"age_group/AUROC/{n}": per.get(f"AUROC/{n}", math.nan) for n in names}}


TARGETS: tuple[Target, ...] = (
    Target("sex", "sex_female", _known, evaluate_sex),
    Target("age", "age_years", _known, evaluate_age),
    Target("age_group", "age_years", _grouped, evaluate_age_group),
)


# ------------------------------------------------------------------------------------------------ task


def standardise(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Features of every split scaled by the training rows' mean and sd (``sklearn StandardScaler``)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x["train"]) if len(x["train"]) else None
    return {s: (scaler.transform(v) if scaler is not None and len(v) else v) for s, v in x.items()}


@TASKS.register("metadata")
class MetadataPrediction(Task):
    name = "metadata"
    relative_cost = 2
    datasets = ("chexpert", "nih")
    metric_forms = FORMS

    def __init__(self, params: dict[str, Any]) -> None:
        from cxrbench.tasks.linear import LinearProbe

        super().__init__(params)
        self.probe = LinearProbe(params)  # the linear probe's frozen features and cache
        self.n: dict[str, int] = {}

    def split_data(self, pretrained: Any, data: Any, fraction: int, p: Mapping) -> dict[str, tuple]:
        """{split: (features (N, D) float32 standardised, rows (N,))} of the split's rows (train: ``fraction``);
        float32 (sklearn keeps it) fits ~1.4x faster than float64 at the same optimum within lbfgs' tolerance."""
        from cxrbench.tasks._common import select_rows

        rows = {s: np.asarray(data.rows(s, fraction if s == "train" else 100)) for s in ("train", "valid", "test")}
        feats = {s: select_rows(self.probe.features(pretrained, data, s, dict(p)), r).float().numpy()
                 for s, r in rows.items()}
        return {s: (x, rows[s]) for s, x in standardise(feats).items()}

    def run(self, pretrained: Any, data: Any, fraction: int, seed: int, out_dir: Path) -> dict[str, Any]:
        p = resolve(self.params, str(data.name), fraction)
        group_names(p["age_bins"])  # a bad edge list fails before any feature is computed
        splits = self.split_data(pretrained, data, fraction, p)
        self.n = {s: int(len(r)) for s, (_, r) in splits.items()}
        metrics: dict[str, Any] = {}
        for target in TARGETS:
            xy = {}
            for s, (x, rows) in splits.items():
                y, usable = target.encode(data.metadata(target.column, rows), p)
                xy[s] = (x[usable], y[usable])
                self.n[f"{s}/{target.name}"], self.n[f"{s}/{target.name}_dropped"] = int(usable.sum()), int(
                    (~usable).sum())
            metrics.update(target.evaluate(xy, p))
        return metrics
