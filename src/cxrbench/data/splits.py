"""Split and fraction protocols.

- ``sklearn_three_way``: the papers' two-call scikit-learn split (train vs rest, then rest halved; FIRST
  half = test).
- ``patient_split``: the ``patient`` protocol, patient-disjoint train/valid/test, seeded.
- ``group_holdout``: hold out whole groups (patients) until a target number of rows is reached (NIH 90/10).
- ``draw_fractions``: nested training fractions (1 % inside 10 % inside 100 %) from the training ids only.

All randomness goes through an explicit ``numpy.random.Generator`` built from a seed argument (or sklearn's
``random_state`` where the reference protocol prescribes it); nothing uses a global RNG.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd


def sklearn_three_way(ids: Sequence[Hashable], test_size: float | int, random_state: int = 0, name: str = "",
                      valid_size: float | int = 0.5) -> dict:
    """{id: split} from ``train_test_split(ids, test_size, random_state)`` -> (train, rest), then
    ``train_test_split(rest, test_size=valid_size, random_state)`` -> (test, valid): the FIRST part of the second
    call is test. ``valid_size`` 0.5 (halves) is the reference; the demo moves held-out images from valid to test
    (a dataset option ``valid_size``). Too few ids for the split raise ``ValueError`` naming ``name``.
    """
    from sklearn.model_selection import train_test_split  # here: only the reference splits need scikit-learn

    ids = list(ids)
    try:
        train, rest = train_test_split(ids, test_size=test_size, random_state=random_state)
        test, valid = train_test_split(rest, test_size=valid_size, random_state=random_state)
    except ValueError as err:
        raise ValueError(f"{name}: cannot split {len(ids)} ids with test_size={test_size}: {err}") from err
    out = dict.fromkeys(train, "train")
    out.update(dict.fromkeys(test, "test"))
    out.update(dict.fromkeys(valid, "valid"))
    return out


def _groups(patients: pd.Series) -> pd.Series:
    """Patient ids as strings; a missing patient id becomes a group of its own (the row)."""
    missing = patients.isna()
    groups = patients.astype(object).where(~missing, None)
    groups[missing] = [f"__row_{i}" for i in np.flatnonzero(missing.to_numpy())]
    return groups.astype(str)


def patient_split(patients: pd.Series, seed: int, sizes: Sequence[float] = (0.7, 0.15, 0.15)) -> pd.Series:
    """Patient-disjoint "train"/"valid"/"test" per row of ``patients`` (index-aligned).

    The unique patients (sorted, then permuted by ``np.random.default_rng(seed)``) are laid end to end with
    their image
    counts; a patient goes to train if the images before it number < sizes[0] * N, to valid if < (sizes[0] +
    sizes[1])
    * N, else to test. So split sizes are close to ``sizes`` in IMAGES and no patient is in two splits. Rows
    without a
    patient id are their own group.
    """
    if len(sizes) != 3 or abs(sum(sizes) - 1.0) > 1e-6 or min(sizes) < 0:
        raise ValueError(f"patient_split: sizes must be 3 non-negative fractions summing to 1, got {tuple(sizes)}")
    groups = _groups(patients)
    counts = groups.value_counts().sort_index()
    order = np.random.default_rng(seed).permutation(len(counts))
    counts = counts.iloc[order]
    before = np.concatenate([[0], np.cumsum(counts.to_numpy())[:-1]])
    n = len(groups)
    bounds = np.array([sizes[0], sizes[0] + sizes[1]]) * n
    names = np.array(["train", "valid", "test"])[np.searchsorted(bounds, before, side="right")]
    return groups.map(dict(zip(counts.index, names, strict=True))).rename("split")


def group_holdout(groups: pd.Series, n_rows: int, rng: np.random.Generator) -> pd.Series:
    """Boolean mask (index-aligned): whole groups, in a random order, held out until >= ``n_rows`` rows are "
    "taken."""
    groups = _groups(groups)
    counts = groups.value_counts().sort_index()
    counts = counts.iloc[rng.permutation(len(counts))]
    before = np.concatenate([[0], np.cumsum(counts.to_numpy())[:-1]])
    chosen = set(counts.index[before < n_rows])
    return groups.isin(chosen)


def _strata_matrix(strata: Sequence | np.ndarray, n: int) -> np.ndarray:
    """(n, K) boolean positives: a 1-D strata is one-hot per distinct value, a 2-D one is multilabel (NaN = "
    "0)."""
    arr = np.asarray(strata)
    if arr.shape[0] != n:
        raise ValueError(f"draw_fractions: strata has {arr.shape[0]} rows for {n} train ids")
    if arr.ndim == 1:
        values = pd.Series(arr).astype(str)
        return values.to_numpy()[:, None] == np.unique(values)[None, :]
    return np.nan_to_num(arr.astype(float), nan=0.0) > 0.5


def _stratified_order(perm: np.ndarray, positives: np.ndarray, min_positives: int = 1) -> tuple[np.ndarray, int]:
    """Move to the front, in ``perm`` order, enough rows that every label with positives has ``min_positives``
    of them (or all it has): label by label, its first positives in ``perm`` order not yet chosen.

    Returns the new order and the number of moved ("seed") rows: every prefix at least that long holds
    ``min(min_positives, positives of the label)`` positives of every label."""
    chosen = np.zeros(len(perm), dtype=bool)  # indexed by row
    for k in range(positives.shape[1]):
        have = int(positives[chosen, k].sum())
        need = min(min_positives, int(positives[:, k].sum())) - have
        if need <= 0:
            continue
        candidates = perm[positives[perm, k] & ~chosen[perm]]
        chosen[candidates[:need]] = True
    front = perm[chosen[perm]]
    return np.concatenate([front, perm[~chosen[perm]]]), len(front)


def draw_fractions(
    train_ids: Sequence[str],
    pcts: Sequence[int] = (1, 10, 100),
    *,
    seed: int,
    strata: Sequence | np.ndarray | None = None,
    stratify: bool = True,
    min_count: int = 1,
    min_positives: int = 1,
    name: str = "",
) -> dict[int, list[str]]:
    """Nested training fractions {pct: ids} drawn from ``train_ids`` only (validation/test stay whole).

    One permutation from ``np.random.default_rng(seed)``; fraction p is its first ``round(p / 100 * n)``
    ids, so a
    smaller fraction is always inside a larger one. Ids are returned in the order of ``train_ids``.

    ``strata`` (per train id: a class value (n,) or multilabel positives (n, K), NaN = 0):
    - ``stratify=True``: for each label that has a positive in train, its first ``min_positives`` positives in
      the permutation are moved to the front, and each fraction holds at least those rows (so it can exceed p %):
      every fraction contains ``min_positives`` positives of every label that has that many (all of a rarer
      label's). For multilabel strata the same holds for each label's negatives (a single-label set such as RSNA
      gets both classes); a class value (1-D strata) is one stratum per class. Nesting still holds (all
      fractions are prefixes). The demo asks for 20 so that its 1% fractions can be scored at all; at paper
      scale 1% of the real sets already holds that many (1 = the plain draw plus one positive and one negative
      per label).
    - ``stratify=False``: plain draw, but a fraction missing a label present in train is an error.
    A fraction with fewer than ``min_count`` ids raises ``ValueError`` naming ``name`` and the fraction.
    """
    ids = list(train_ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"draw_fractions({name}): duplicated train ids")
    n = len(ids)
    perm = np.random.default_rng(seed).permutation(n)
    positives = None if strata is None else _strata_matrix(strata, n)
    if positives is not None and np.asarray(strata).ndim == 2:
        # a label's negatives are a stratum too: with a single label (RSNA, SIIM) the 1% fraction would otherwise be
        # the floor's positives alone, a training set with one class
        positives = np.concatenate([positives, ~positives], axis=1)
    floor = 0
    if positives is not None and stratify:
        perm, floor = _stratified_order(perm, positives, min_positives)
    out: dict[int, list[str]] = {}
    for pct in sorted(pcts):
        if not 0 < pct <= 100:
            raise ValueError(f"draw_fractions({name}): fraction {pct}% is not in (0, 100]")
        k = n if pct == 100 else max(int(round(pct / 100 * n)), floor)
        if k < min_count:
            raise ValueError(
                f"dataset {name!r}: fraction {pct}% of {n} train images gives {k} < {min_count} examples; "
                "use a larger dataset, a larger fraction, or a stratified draw"
            )
        chosen = np.sort(perm[:k])
        if positives is not None and not stratify:
            missing = positives.any(0) & ~positives[chosen].any(0)
            if missing.any():
                raise ValueError(
                    f"dataset {name!r}: fraction {pct}% has no positive for label column(s) "
                    f"{np.flatnonzero(missing).tolist()}; use the stratified draw"
                )
        out[pct] = [ids[i] for i in chosen]
    return out
