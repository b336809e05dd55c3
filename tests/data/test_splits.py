import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from cxrbench.data.splits import draw_fractions, group_holdout, patient_split, sklearn_three_way


def test_sklearn_three_way_first_half_is_test():
    ids = [f"id{i:03d}" for i in range(100)]
    out = sklearn_three_way(ids, 0.3, 0)
    train, rest = train_test_split(ids, test_size=0.3, random_state=0)
    test, valid = train_test_split(rest, test_size=0.5, random_state=0)
    assert {i for i, s in out.items() if s == "train"} == set(train)
    assert {i for i, s in out.items() if s == "test"} == set(test)
    assert {i for i, s in out.items() if s == "valid"} == set(valid)
    assert (len(train), len(test), len(valid)) == (70, 15, 15)


def _patients(n_patients=60, seed=1):
    rng = np.random.default_rng(seed)
    return pd.Series(np.repeat([f"p{i}" for i in range(n_patients)], rng.integers(1, 6, n_patients)))


def test_patient_split_disjoint_sizes_and_deterministic():
    patients = _patients()
    split = patient_split(patients, seed=3)
    assert split.index.equals(patients.index)
    assert set(split) == {"train", "valid", "test"}
    assert (pd.DataFrame({"p": patients, "s": split}).groupby("p")["s"].nunique() == 1).all()
    frac = split.value_counts(normalize=True)
    assert abs(frac["train"] - 0.7) < 0.1 and abs(frac["valid"] - 0.15) < 0.1
    assert split.equals(patient_split(patients, seed=3))
    assert not split.equals(patient_split(patients, seed=4))


def test_patient_split_missing_patient_is_own_group():
    patients = pd.Series(["a", "a", None, None, "b"])
    split = patient_split(patients, seed=0, sizes=(0.6, 0.2, 0.2))
    assert split.iloc[0] == split.iloc[1]
    with pytest.raises(ValueError, match="sum"):
        patient_split(patients, seed=0, sizes=(0.5, 0.2, 0.2))


def test_group_holdout_whole_groups():
    patients = _patients()
    held = group_holdout(patients, 30, np.random.default_rng(0))
    assert held.sum() >= 30
    g = pd.DataFrame({"p": patients, "h": held}).groupby("p")["h"].nunique()
    assert (g == 1).all()


IDS = [f"img{i:04d}" for i in range(1000)]


def test_fractions_nested_sizes_deterministic():
    fr = draw_fractions(IDS, (1, 10, 100), seed=7, name="toy")
    assert [len(fr[p]) for p in (1, 10, 100)] == [10, 100, 1000]
    assert set(fr[1]) <= set(fr[10]) <= set(fr[100]) == set(IDS)
    assert fr == draw_fractions(IDS, (100, 10, 1), seed=7, name="toy")
    assert fr[10] != draw_fractions(IDS, (1, 10, 100), seed=8)[10]
    # same draw as an explicit permutation of the given generator seed
    perm = np.random.default_rng(7).permutation(1000)
    assert fr[10] == [IDS[i] for i in sorted(perm[:100])]


def test_fractions_only_from_train_ids():
    train = IDS[:500]
    fr = draw_fractions(train, seed=0)
    assert set(fr[10]) <= set(train) and set(fr[100]) == set(train)


def test_too_small_fraction_names_dataset_and_fraction():
    with pytest.raises(ValueError, match=r"'tiny'.*1%"):
        draw_fractions(IDS[:20], (1, 10, 100), seed=0, name="tiny")


def test_stratified_guarantees_a_positive_per_label():
    n = 300
    labels = np.zeros((n, 3))
    labels[[5, 200], 0] = 1
    labels[77, 1] = 1  # label 2 has no positive at all
    ids = IDS[:n]
    fr = draw_fractions(ids, (1, 10, 100), seed=0, strata=labels, name="strat")
    pos = {i for i in range(n) if labels[i].any()}
    for p in (1, 10):
        rows = [ids.index(i) for i in fr[p]]
        assert labels[rows, 0].any() and labels[rows, 1].any()
        assert len(fr[p]) == max(round(p / 100 * n), 2)
    assert set(fr[1]) <= set(fr[10])
    assert len(pos) == 3
    with pytest.raises(ValueError, match="no positive"):
        draw_fractions(ids, (1, 10, 100), seed=0, strata=labels, stratify=False, name="strat")


def test_stratified_multiclass_strata():
    classes = np.array([0] * 290 + [1] * 8 + [2] * 2)
    fr = draw_fractions(IDS[:300], (1,), seed=1, strata=classes)
    got = {int(classes[IDS.index(i)]) for i in fr[1]}
    assert got == {0, 1, 2} and len(fr[1]) == 3


def test_stratified_floor_holds_min_positives_per_label_and_stays_nested():
    """200 train ids, label 0 on every 10th id (20 positives), label 1 on ids 0-4 only (5 positives): with
    min_positives=8 every fraction holds >= 8 of label 0 and all 5 of label 1, 1% inside 10% inside 100%."""
    from cxrbench.data.splits import draw_fractions

    n = 200
    y = np.zeros((n, 2))
    y[::10, 0] = 1
    y[:5, 1] = 1
    ids = [f"i{k:03d}" for k in range(n)]
    fr = draw_fractions(ids, (1, 10, 100), seed=3, strata=y, min_positives=8, name="toy")
    index = {v: k for k, v in enumerate(ids)}
    for pct in (1, 10):
        rows = [index[i] for i in fr[pct]]
        assert y[rows, 0].sum() >= 8 and y[rows, 1].sum() == 5, pct
        assert (1 - y[rows]).sum(0).min() >= 8, pct  # each label's negatives are a stratum too
    # label 0's 8 positives bring >= 8 negatives of label 1; label 1's rows 1-4 are 4 of label 0's: 4 more at most
    assert len(fr[1]) <= 8 + 5 + 4 and set(fr[1]) <= set(fr[10]) <= set(fr[100]) and len(fr[100]) == n
    # the plain 10% (20 ids) already holds some positives: the floor adds only what is missing
    assert len(fr[10]) == max(20, len(fr[1]))


def test_single_label_fraction_holds_both_classes():
    """RSNA-like: one label, 30 positives among 300 train ids, min_positives=20: the 1% fraction (3 ids plain) holds
    20 positives AND 20 negatives, not the floor's positives alone (a one-class training set)."""
    from cxrbench.data.splits import draw_fractions

    y = np.zeros((300, 1))
    y[np.arange(0, 300, 10)] = 1
    ids = [f"p{k:03d}" for k in range(300)]
    fr = draw_fractions(ids, (1, 10, 100), seed=0, strata=y, min_positives=20, name="toy")
    index = {v: k for k, v in enumerate(ids)}
    rows = [index[i] for i in fr[1]]
    assert y[rows, 0].sum() >= 20 and (1 - y[rows, 0]).sum() >= 20
    assert len(fr[1]) <= 40 and set(fr[1]) <= set(fr[10])
