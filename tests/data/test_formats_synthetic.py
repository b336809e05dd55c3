"""Every reader on the synthetic generator's layouts (skipped when the generator is not available)."""

import pytest

from cxrbench.data.formats._base import RAW_COLUMNS, SPLITS
from cxrbench.registry import DATASETS

synthetic = pytest.importorskip("cxrbench.data.synthetic")
generate = getattr(synthetic, "generate", None)
if generate is None:
    pytest.skip("cxrbench.data.synthetic.generate is not available", allow_module_level=True)

NAMES = ["mimic", "chexpert", "nih", "rsna", "siim", "covidx", "object_cxr", "ms_cxr"]
SIZES = {"mimic": 40, "chexpert": 120, "nih": 80, "rsna": 60, "siim": 60, "covidx": 60, "object_cxr": 60, "ms_cxr": 10}


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, seed=0, sizes=SIZES, image_size=64, datasets=NAMES)
    return root


def test_registry_has_all_eight():
    assert set(NAMES) <= set(DATASETS.names())


@pytest.mark.parametrize("name", NAMES)
def test_reader_on_generated_layout(raw_root, name):
    fmt = DATASETS.get(name)()
    options = {}
    if name == "mimic":
        options["exclude_csv"] = str(raw_root / "ms_cxr" / "MS_CXR_Local_Alignment_v1.1.0.csv")
    if name == "chexpert":
        options["n_5x200"] = 2
    res = fmt.read(raw_root / name, options)
    idx = res.index
    assert len(idx) > 0 and res.problems == []
    assert set(RAW_COLUMNS) | set(fmt.label_names) <= set(idx.columns)
    assert idx["image_id"].is_unique
    for path in idx["path"].head(5):
        assert (raw_root / name / path).exists(), path
    split = fmt.reference_split(idx, options)
    assert split.index.equals(idx.index)
    assert set(split.dropna()) <= set(SPLITS) and split.notna().any()
    if fmt.has_text:
        assert idx["text"].map(lambda t: isinstance(t, str) and len(t) > 0).all()
    if fmt.has_boxes:
        assert idx["boxes"].map(len).sum() > 0
