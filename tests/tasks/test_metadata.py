"""The metadata task (sex, age, age group from frozen features), the sex / age columns of the prepared store, and the
synthetic generator's demographic signal."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.data.demographics import age_in_years, parse_age, parse_sex
from cxrbench.data.formats._util import BadRows
from cxrbench.data.problems import Problems, hash_id
from cxrbench.data.synthetic.latent import Case, case_rng, sample_anatomy, with_demographics
from cxrbench.data.synthetic.render import render, to_uint8
from cxrbench.models._base import Backbone, BackboneOutput
from cxrbench.registry import TASKS
from cxrbench.tasks.metadata import age_groups, group_names, mae, r2

PARAMS = {"datasets": ["chexpert"], "image_size": 64, "crop_ratio": 1.0, "logistic_C": [0.1, 1.0],
          "ridge_alpha": [1.0, 10.0, 100.0], "age_bins": [0, 40, 60, 80, 200],
          "bootstrap": {"resamples": 200, "seed": 0}}


# ------------------------------------------------------------------------------------------------ metrics


def test_mae_and_r2_against_hand_computed_values():
    y, pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 5.0])
    # |errors| 0.5, 0, 1, 1 -> MAE 0.625; SS_res 0.25 + 0 + 1 + 1 = 2.25, SS_tot (mean 2.5) 2.25+0.25+0.25+2.25 = 5
    assert mae(pred, y) == pytest.approx(0.625) and r2(pred, y) == pytest.approx(1 - 2.25 / 5)
    idx = np.array([[0, 0, 3, 3], [1, 2, 2, 3]])
    # resample 0: y 1,1,4,4 pred 1.5,1.5,5,5 -> MAE 0.75, SS_res 0.25*2+1*2 = 2.5, SS_tot (mean 2.5) 2.25*4 = 9
    # resample 1: y 2,3,3,4 pred 2,2,2,5 -> MAE 0.75, SS_res 0+1+1+1 = 3, SS_tot (mean 3) 1+0+0+1 = 2
    np.testing.assert_allclose(mae.resampled(pred, y, idx), [0.75, 0.75])
    np.testing.assert_allclose(r2.resampled(pred, y, idx), [1 - 2.5 / 9, 1 - 3 / 2])
    assert math.isnan(r2(pred[:1], y[:1])) and math.isnan(r2(pred, np.full(4, 2.0)))


def test_age_groups_are_half_open_and_bad_edges_are_named():
    ages = np.array([0.5, 39.9, 40.0, 59.0, 60.0, 80.0, 199.0, 200.0, -1.0])
    assert age_groups(ages, [0, 40, 60, 80, 200]).tolist() == [0, 0, 1, 1, 2, 3, 3, -1, -1]
    assert group_names([0, 40, 60, 80, 200]) == ["0-40", "40-60", "60-80", "80-200"]
    with pytest.raises(ValueError, match="age_bins.*increasing"):
        group_names([0, 60, 40])


def test_raw_sex_and_age_values(tmp_path):
    """Unknown is NaN without a problem; a value that cannot be a sex or an age is a counted bad_metadata problem
    naming the table line and column, and never repeating the value."""
    problems = Problems(tmp_path)
    bad = BadRows(tmp_path / "t.csv", problems)
    ids = pd.Series([f"im{i}" for i in range(6)])
    sex = parse_sex(pd.Series(["Female", "M", "Unknown", "", "X", "f"]), bad, ids, "Sex")
    age = parse_age(pd.Series(["67", "058Y", "006M", "0", "412", "abc"]), bad, ids, "Age")
    np.testing.assert_array_equal(sex, [1.0, 0.0, np.nan, np.nan, np.nan, 1.0])
    np.testing.assert_allclose(age, [67.0, 58.0, 0.5, np.nan, np.nan, np.nan])
    got = [(p.kind, p.line, p.column, p.image) for p in problems.items]
    assert got == [("bad_metadata", 6, "Sex", "im4"), ("bad_metadata", 6, "Age", "im4"),
                   ("bad_metadata", 7, "Age", "im5")]
    assert all("412" not in p.detail and "X" not in p.detail.split(";")[0] for p in problems.items)
    assert problems.images() == set()  # effect "fixed": no image is lost
    assert math.isnan(age_in_years("")) and age_in_years("-3") is None


# ------------------------------------------------------------------------------------------------ task


class PatchStats(Backbone):
    """A fixed encoder: pooled = per cell of a 4 x 4 grid, the mean intensity and the mean |vertical gradient| of
    channel 0 (32-d). The generator's sex signal moves the first (body outline), its age signal the second (ribs)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.out_dim, self.pyramid_channels, self.pyramid_strides = 32, [1], [1]

    def forward(self, x):
        grad = (x[:, :1, 1:] - x[:, :1, :-1]).abs()
        cells = [F.adaptive_avg_pool2d(v, 4).flatten(1) for v in (x[:, :1], grad)]
        pooled = torch.cat(cells, 1)
        return BackboneOutput(pooled=pooled + self.dummy, pyramid=[x[:, :1]])


def demographic_store(make_store, n=150, size=64, seed=0, unknown=()):
    """Images from the synthetic generator with the patient's sex and age drawn in (no findings); metadata as the
    store keeps it (sex_female 1 / 0 / NaN, age_years / NaN); rows in ``unknown`` lose both values."""
    rng = np.random.default_rng(seed)
    female, age = rng.integers(0, 2, n).astype(bool), rng.uniform(18, 90, n)
    images = np.stack([to_uint8(render(Case(with_demographics(sample_anatomy(case_rng(seed, "meta", i)),
                                                              female[i], age[i]), (), "PA", i), size, size))
                       for i in range(n)])
    splits = np.array(["train", "train", "valid", "test", "test"])[np.arange(n) % 5]
    store = make_store("chexpert", images, np.zeros((n, 1)), splits, label_names=["A"],
                       fractions={10: np.flatnonzero(splits == "train")[:20]})
    meta = {"sex_female": female.astype(float), "age_years": age.copy()}
    for col in meta.values():
        col[list(unknown)] = np.nan
    store.metadata = lambda name, rows: meta[name][np.asarray(rows)]
    return store, meta


def test_the_task_learns_sex_and_age_from_the_synthetic_signal(make_store, pretrained_factory, tmp_path):
    store, _ = demographic_store(make_store)
    task = TASKS.get("metadata")(PARAMS)
    out = tmp_path / "run"
    out.mkdir()
    m = task.run(pretrained_factory(PatchStats(), image_size=64), store, 100, 0, out)
    assert m["sex/AUROC_low"] > 0.5 and m["sex/AUROC"] > 0.75, m  # 95% bootstrap intervals above chance
    assert m["age/R2_low"] > 0 and m["age_group/AUROC_low"] > 0.5 and m["age/MAE"] < m["age/MAE_high"], m
    # a random conv net's 16 global means carry the body outline (sex) too
    assert TASKS.get("metadata")(PARAMS).run(pretrained_factory(), store, 100, 0, out)["sex/AUROC_low"] > 0.5
    assert {"age_group/AUROC", "age_group/AUROC/0-40", "age_group/AUROC/80-200"} <= set(m)
    assert list(out.iterdir()) == []  # nothing per image leaves the run: no predictions, no examples
    assert task.n["test/sex"] == 60 and task.n["train/age"] == 60
    small = task.run(pretrained_factory(PatchStats(), image_size=64), store, 10, 0, out)  # 10%: its 20 rows
    assert task.n["train"] == 20 and np.isfinite(small["sex/AUROC"])


def test_unknown_values_are_dropped_from_their_target_and_counted(make_store, pretrained_factory, tmp_path):
    unknown = [0, 1, 3, 5, 8]  # train 0, 1, 5; test 3, 8
    store, meta = demographic_store(make_store, n=60, unknown=unknown)
    task = TASKS.get("metadata")(PARAMS)
    m = task.run(pretrained_factory(), store, 100, 0, tmp_path)
    assert (task.n["train/sex_dropped"], task.n["test/sex_dropped"], task.n["valid/sex_dropped"]) == (3, 2, 0)
    assert task.n["train/sex"] == 24 - 3 and task.n["test/age"] == 24 - 2 and task.n["test"] == 24
    assert task.n["test/age_group_dropped"] == 2 and all(math.isfinite(m[k]) for k in ("sex/AUROC", "age/MAE"))


def test_a_training_set_of_one_sex_scores_chance(make_store, pretrained_factory, tmp_path):
    store, meta = demographic_store(make_store, n=60)
    train = store.rows("train")
    meta["sex_female"][train] = 1.0
    m = TASKS.get("metadata")(PARAMS).run(pretrained_factory(), store, 100, 0, tmp_path)
    assert m["sex/AUROC"] == pytest.approx(0.5)


def test_generator_signal_is_local_to_the_body_and_ribs():
    """Sex widens / narrows the body outline, age fades the ribs; lungs, heart and findings keep their geometry."""
    anat = sample_anatomy(case_rng(0, "x", 1))
    young_m, old_f = with_demographics(anat, False, 20), with_demographics(anat, True, 85)
    assert young_m.body_rx > anat.body_rx > old_f.body_rx and young_m.bone > 1 > old_f.bone
    assert (young_m.lung_cx, young_m.heart_rx) == (anat.lung_cx, anat.heart_rx)
    a, b = (render(Case(x, (), "PA", 3), 64, 64) for x in (young_m, old_f))
    assert not np.array_equal(a, b)


# ------------------------------------------------------------------------------------------------ store


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Synthetic CheXpert (with one Unknown sex, one age 0) and NIH (one age 412, one 058Y) prepared at 16 px."""
    from cxrbench.data.prepare import prepare_dataset
    from cxrbench.data.synthetic.api import generate

    root = tmp_path_factory.mktemp("meta")
    generate(root / "raw", seed=0, sizes={"chexpert": 40, "nih": 30}, image_size=32, datasets=["chexpert", "nih"])
    table = root / "raw" / "chexpert" / "CheXpert-v1.0-small" / "train.csv"
    cx = pd.read_csv(table, dtype=str, keep_default_na=False)
    frontal = np.flatnonzero((cx["Frontal/Lateral"] == "Frontal").to_numpy())
    cx.loc[frontal[-1], "Sex"], cx.loc[frontal[-2], "Age"] = "Unknown", "0"  # late rows: not in the 5x200 set
    cx.to_csv(table, index=False)
    entry = root / "raw" / "nih" / "Data_Entry_2017.csv"
    lines = entry.read_text().splitlines()
    for k, age in ((1, "412"), (2, "058Y")):
        fields = lines[k].split(",")
        fields[4] = age
        lines[k] = ",".join(fields)
    entry.write_text("\n".join(lines) + "\n")
    kw = {"size": 16, "workers": 1, "fractions": (50, 100), "progress": False, "stream": io.StringIO()}
    for ds, opt in (("chexpert", {"n_5x200": 1}), ("nih", {})):
        prepare_dataset(ds, root / "raw" / ds, root / ds, options=opt, **kw)
    return root


def _expected(raw: pd.DataFrame, id_col: str, sex_col: str, age_col: str, female: str) -> dict[str, tuple]:
    """{hashed image id: (sex_female, age_years)} derived from the raw table in the test's own terms."""
    out = {}
    for _, row in raw.iterrows():
        sex = 1.0 if row[sex_col] == female else 0.0 if row[sex_col] in ("Male", "M") else np.nan
        digits = "".join(ch for ch in str(row[age_col]) if ch.isdigit())
        age = float(digits) if digits and 0 < float(digits) <= 122 else np.nan
        out[hash_id(row[id_col], "cxrbench")] = (sex, age)
    return out


@pytest.mark.parametrize("dataset", ["chexpert", "nih"])
def test_store_round_trips_sex_and_age(prepared, dataset):
    from cxrbench.data.store import PreparedDataset

    if dataset == "chexpert":
        raw = pd.read_csv(prepared / "raw/chexpert/CheXpert-v1.0-small/train.csv", dtype=str, keep_default_na=False)
        raw = pd.concat([raw, pd.read_csv(prepared / "raw/chexpert/CheXpert-v1.0-small/valid.csv", dtype=str,
                                          keep_default_na=False)])
        expected = _expected(raw, "Path", "Sex", "Age", "Female")
    else:
        raw = pd.read_csv(prepared / "raw/nih/Data_Entry_2017.csv", dtype=str, keep_default_na=False)
        expected = _expected(raw, "Image Index", "Patient Gender", "Patient Age", "F")
    store = PreparedDataset(prepared / dataset)
    rows = np.arange(len(store))
    got = np.stack([store.metadata("sex_female", rows), store.metadata("age_years", rows)], 1)
    want = np.array([expected[i] for i in store.manifest["image_id"]])
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[:, 1]).any() and np.isnan(got[:, 0]).any() == (dataset == "chexpert")  # the planted ones
    meta = json.loads((prepared / dataset / "meta.json").read_text())
    unknown = sum(v["unknown"] for v in meta["metadata"]["age_years"].values())
    assert unknown == int(np.isnan(got[:, 1]).sum())
    assert meta["problem_counts"].get("bad_metadata", 0) == (1 if dataset == "nih" else 0)
    with pytest.raises(KeyError, match="no metadata 'weight'"):
        store.metadata("weight", rows)


# ------------------------------------------------------------------------------------------------ report table


def test_metadata_table_places_each_cell_and_leaves_missing_runs_blank():
    from cxrbench import matrix
    from cxrbench.report.tables import TASK_TABLES, metadata_table

    rec = [("chexpert", "g2d", 1, "sex/AUROC", 0.8123), ("chexpert", "g2d", 1, "sex/AUROC_low", 0.70),
           ("chexpert", "g2d", 1, "sex/AUROC_high", 0.90), ("chexpert", "g2d", 1, "age/MAE", 12.345),
           ("nih", "random", 100, "age/R2", 0.25), ("nih", "random", 100, "age_group/AUROC", 0.6),
           ("chexpert", "g2d", 1, "AUROC", 0.99)]  # another metric: not a column
    summary = pd.DataFrame([{"task": "metadata", "dataset": d, "method": m, "fraction": f, "metric": k, "mean": v}
                            for d, m, f, k, v in rec]
                           + [{"task": "linear", "dataset": "chexpert", "method": "g2d", "fraction": 1,
                               "metric": "sex/AUROC", "mean": 0.1}])  # another task: ignored
    notes, table = metadata_table(summary, {"scale": "demo", "split_protocol": "reference", "seeds": [0]})
    assert table.to_dict("records") == [
        {"dataset": "CheXpert", "method": "g2d", "fraction": "1%", "sex AUROC (%)": "81.2 [70.0, 90.0]",
         "age MAE (years)": "12.3", "age R^2": "", "age-group AUROC (%)": ""},
        {"dataset": "ChestX-ray14", "method": "random", "fraction": "100%", "sex AUROC (%)": "",
         "age MAE (years)": "", "age R^2": "0.25", "age-group AUROC (%)": "60.0"}]
    assert notes[0].startswith("**synthetic demo data") and "Seeds: [0]" in notes[1]
    assert set(matrix.TASK_TABLES) <= set(TASK_TABLES)  # every table the report files name has a builder
    _, empty = metadata_table(summary.iloc[:0], {"scale": "paper"})
    assert len(empty) == 0 and list(empty.columns)[:3] == ["dataset", "method", "fraction"]
