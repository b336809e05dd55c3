"""The contamination audit (cxrbench.audit) finds exactly the duplicates the synthetic generator planted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrbench.audit import core as audit
from cxrbench.data.problems import hash_id
from cxrbench.report import contamination

DATASETS = ("mimic", "rsna", "siim", "ms_cxr", "nih")
SIZES = {"mimic": 40, "rsna": 24, "siim": 24, "ms_cxr": 12, "nih": 20}
K = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small synthetic download with K planted duplicates per target, prepared at 64 px (~6 s once)."""
    from cxrbench.data.prepare import prepare_dataset
    from cxrbench.data.synthetic import generate

    root = tmp_path_factory.mktemp("audit")
    raw, prep = root / "raw", root / "prepared"
    generate(raw, seed=0, sizes=SIZES, image_size=64, datasets=list(DATASETS), duplicates=K)
    opts = {"mimic": {"exclude_csv": str(raw / "ms_cxr" / "MS_CXR_Local_Alignment_v1.1.0.csv")},
            "ms_cxr": {"images_root": str(raw / "mimic")}}
    for d in DATASETS:
        prepare_dataset(d, raw / d, prep / d, size=64, workers=1, progress=False, options=opts.get(d, {}))
    truth = json.loads((raw / "DUPLICATES.json").read_text())
    return {"raw": raw, "prep": prep, "truth": truth, "cache": root / "cache"}


def _cfg(world, **extra):
    return {"stores": {d: str(world["prep"] / d) for d in DATASETS}, "pretrain_dataset": "mimic",
            "tests": ["rsna", "siim", "ms_cxr", "nih"], "hash_size": 16, "hamming_threshold": 10,
            "image_lists": {}, "cache": str(world["cache"]), **extra}


def _rows(world, dataset, raw_ids, column="image_id"):
    m = pd.read_parquet(world["prep"] / dataset / "manifest.parquet")
    hashed = {hash_id(r, audit.salt()) for r in raw_ids}
    return sorted(int(r) for r in m.loc[m[column].isin(hashed), "row"])


def _pair(result, corpus, test):
    return next(p for p in result["pairs"] if p["corpus"] == corpus and p["test"] == f"{test}/test")


def test_the_audit_finds_exactly_the_planted_duplicates(world):
    result = audit.run_audit(_cfg(world))
    planted = world["truth"]["planted"]
    for target in ("rsna", "siim"):
        expected = _rows(world, target, [p["target_id"] for p in planted if p["target"] == target])
        assert len(expected) == K  # the targets are in the test split, as the generator meant
        assert result["contaminated"][target]["rows"] == expected
        pair = _pair(result, "mimic", target)
        patients = pd.read_parquet(world["prep"] / target / "manifest.parquet").get("patient_hash")
        n_patients = 0 if patients is None else patients.iloc[expected].dropna().nunique()  # RSNA/SIIM: no ids
        assert (pair["by"], pair["shared_images"], pair["shared_patients"]) == ("hash", K, n_patients)
    assert result["contaminated"]["nih"]["rows"] == [] and _pair(result, "mimic", "nih")["by"] == "hash"
    # MS-CXR patients are excluded from the pretraining corpus (data.datasets.mimic.options.exclude_csv): by ids, 0
    ms = _pair(result, "mimic", "ms_cxr")
    assert (ms["by"], ms["shared_images"], ms["shared_patients"]) == ("ids", 0, 0)
    text = json.dumps(result)
    assert not any(p[k] in text for p in planted for k in ("source_id", "target_id", "source_patient"))


def test_an_image_list_is_matched_by_ids_and_its_images_by_hash(world, tmp_path):
    """A RAD-DINO-style list: MS-CXR's MIMIC dicom ids (found in the MS-CXR test split by ids, though the MIMIC
    store excludes them) and the MIMIC paths of the first planted RSNA source (found in RSNA's test set by hash)."""
    truth = world["truth"]
    shared = [s["source_id"] for s in truth["shared_ids"]]
    src = next(p for p in truth["planted"] if p["target"] == "rsna")
    path = f"files/p{src['source_patient'][:2]}/p{src['source_patient']}/s1/{src['source_id']}.jpg"
    entries = [("MIMIC-CXR", d) for d in shared] + [("MIMIC-CXR", path), ("PadChest", "x.png")]
    csv = tmp_path / "training_images.csv"
    pd.DataFrame(entries, columns=["dataset", "image_id"]).to_csv(csv, index=False)
    spec = {"path": str(csv), "aliases": {"mimic-cxr": "mimic"}}
    result = audit.run_audit(_cfg(world, image_lists={"rad_dino": spec}))
    ms = pd.read_parquet(world["prep"] / "ms_cxr" / "manifest.parquet")
    test_ids = ms.loc[ms["split"] == "test", "dicom_id"]
    pair = _pair(result, "rad_dino", "ms_cxr")
    assert (pair["by"], pair["shared_images"]) == ("ids", test_ids.nunique()) and pair["shared_images"] > 0
    rsna = _pair(result, "rad_dino", "rsna")
    assert (rsna["by"], rsna["shared_images"], rsna["corpus_images"]) == ("hash", 1, 1)
    assert result["unmatched"]["rad_dino"] == {"mimic": len(shared), "padchest": 1}


def test_the_threshold_separates_planted_from_distinct_images(world):
    """Planted pairs lie within the threshold; no two distinct images of different datasets do."""
    h = {d: audit.phashes(world["prep"] / d, world["cache"], 16) for d in ("mimic", "rsna", "siim", "nih")}
    planted = {(p["target"], r) for p in world["truth"]["planted"] for r in _rows(world, p["target"], [p["target_id"]])}
    for target in ("rsna", "siim", "nih"):
        dist = audit.min_distance(h[target], h["mimic"])
        hit = {(target, int(i)) for i in np.flatnonzero(dist <= 10)}
        assert hit == {p for p in planted if p[0] == target}
        assert all(dist[i] > 10 for i in range(len(dist)) if (target, i) not in planted)


def test_the_audit_hashes_ids_with_the_salt_prepare_uses():
    import inspect

    from cxrbench.data.prepare import prepare_dataset

    assert audit.salt() == inspect.signature(prepare_dataset).parameters["salt"].default


def test_min_distance_counts_differing_bits():
    q = np.array([[0b00000000, 0b11111111], [0b10101010, 0b00000000]], dtype=np.uint8)
    r = np.array([[0b00000001, 0b11111111], [0b10101010, 0b00000011]], dtype=np.uint8)
    # q0: 1 bit from r0, 4 + 8 + 2 from r1 -> 1; q1: 4 + 1 + 8 from r0, 2 from r1 -> 2
    assert audit.min_distance(q, r).tolist() == [1, 2]
    assert audit.min_distance(q, r[:0]).tolist() == [17, 17]


def test_hashes_are_cached_by_store_content(world, monkeypatch):
    import imagehash

    first = audit.phashes(world["prep"] / "nih", world["cache"], 16)
    monkeypatch.setattr(imagehash, "phash", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = audit.phashes(world["prep"] / "nih", world["cache"], 16)
    assert first.shape == (len(pd.read_parquet(world["prep"] / "nih" / "manifest.parquet")), 32)
    assert np.array_equal(first, again)
    with pytest.raises(AssertionError, match="recomputed"):  # another hash size is another cache entry
        audit.phashes(world["prep"] / "nih", world["cache"], 8)


def test_bad_image_lists_name_the_key_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"audit.image_lists.rad: .*nope.csv"):
        audit.read_image_list("rad", str(tmp_path / "nope.csv"))
    bad = tmp_path / "l.csv"
    bad.write_text("path,source\na.png,nih\n")
    with pytest.raises(KeyError, match=r"audit.image_lists.rad: .*\['image_id', 'dataset'\]"):
        audit.read_image_list("rad", str(bad))
    df = audit.read_image_list("rad", {"path": str(bad), "id_column": "path", "dataset": "NIH"})
    assert df.to_dict("records") == [{"dataset": "nih", "image": "a.png"}]


def test_the_clean_metric_drops_the_contaminated_images():
    """AUROC on 4 images is 0.75 (one discordant pair of 4); dropping the negative scored 0.8 leaves 1.0."""
    from cxrbench.matrix import Run

    pred = {"kind": "classification", "row": np.array([10, 11, 12, 13]),
            "scores": np.array([[0.9], [0.8], [0.7], [0.1]], dtype=np.float32),
            "targets": np.array([[1], [0], [1], [0]], dtype=np.uint8), "multiclass": np.asarray(False)}
    run = Run("g2d", "linear", "rsna", 100, 0)
    result = {"contaminated": {"rsna": {"rows": [11]}}}
    table = contamination.clean_metrics({run: (pred, ["Pneumonia"])}, result)
    got = table.set_index("metric").loc["AUROC"]
    assert (got["all"], got["clean"], got["excluded"]) == (pytest.approx(0.75), pytest.approx(1.0), 1)


def test_subset_reindexes_detections():
    pred = {"kind": "detection", "row": np.array([5, 6, 7]), "det_image": np.array([0, 1, 1, 2]),
            "det_boxes": np.arange(16).reshape(4, 4), "det_scores": np.array([0.9, 0.8, 0.7, 0.6]),
            "gt_image": np.array([1, 2]), "gt_boxes": np.ones((2, 4)), "max_dets": np.asarray(100)}
    sub = contamination.subset(pred, np.array([True, False, True]))
    assert sub["row"].tolist() == [5, 7] and sub["det_image"].tolist() == [0, 1]
    assert sub["det_scores"].tolist() == [0.9, 0.6] and sub["det_boxes"][1].tolist() == [12, 13, 14, 15]
    assert sub["gt_image"].tolist() == [1] and len(sub["gt_boxes"]) == 1 and int(sub["max_dets"]) == 100


def test_the_report_tables_read_the_audit_result(tmp_path):
    result = {"pairs": [{"corpus": "mimic", "test": "rsna/test", "by": "hash", "corpus_images": 9, "test_images": 4,
                         "shared_images": 1, "shared_patients": 1}], "hash_size": 16, "hamming_threshold": 12,
              "contaminated": {"rsna": {"rows": [1]}}, "unmatched": {}}
    audit.write_result(result, tmp_path / "contamination.json")
    params = {"scale": "demo", "audit": {"out": str(tmp_path), "exclude_contaminated": False}}
    (stem, _, notes, pairs), (stem2, _, notes2, metrics) = contamination.report_tables(params, {})
    assert (stem, stem2) == ("contamination", "contamination_metrics")
    assert pairs.to_dict("records") == result["pairs"] and len(metrics) == 0
    assert "synthetic demo data" in notes[0] and "exclude_contaminated is false" in notes2[-1]
    missing = contamination.report_tables({"audit": {"out": str(tmp_path / "none")}}, {})[0]
    assert "No audit result" in missing[2][0] and len(missing[3]) == 0
