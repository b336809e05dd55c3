"""PreparedDataset / ImageDataset / collate over a tiny prepared store."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrbench.data.formats._base import DatasetFormat, ReadResult
from cxrbench.data.prepare import prepare_dataset
from cxrbench.data.loader import ImageDataset, collate
from cxrbench.data.store import PreparedDataset


class Tiny(DatasetFormat):
    """10 images 16 x 32 (W x H = 32 x 16): rows 0-5 train, 6-7 valid, 8-9 test; a box and a mask on even rows."""

    name = "tiny_store"
    label_names = ("X", "Y", "Z")
    label_kind = "multiclass"
    has_boxes = has_masks = True

    def read(self, raw_dir: Path, options: dict) -> ReadResult:
        rows = [{"image_id": f"t{i}", "path": f"{i}.png", "patient": f"p{i}", "X": float(i % 3 == 0),
                 "Y": float(i % 3 == 1), "Z": float(i % 3 == 2), "boxes": [[0.0, 0.0, 8.0, 4.0]] if i % 2 == 0 else [],
                 "shapes": [], "text": f"text {i}" if i < 9 else None} for i in range(10)]
        return ReadResult(pd.DataFrame(rows))

    def reference_split(self, index: pd.DataFrame, options: dict) -> pd.Series:
        return pd.Series(["train"] * 6 + ["valid"] * 2 + ["test"] * 2, index=index.index)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> PreparedDataset:
    root = tmp_path_factory.mktemp("store")
    for i in range(10):
        Image.fromarray(np.full((16, 32), 20 * i, np.uint8)).save(root / f"{i}.png")
    prepare_dataset(Tiny(), root, root / "out", size=16, workers=1, progress=False, fractions=(20, 100))
    return PreparedDataset(root / "out")


def test_metadata(store):
    assert (store.name, store.size, store.label_names, store.label_kind) == ("tiny_store", 16, ("X", "Y", "Z"),
                                                                             "multiclass")
    assert len(store) == 10 and store.images.shape == (10, 16, 16) and store.masks.shape == (10, 16, 16)
    assert store.fractions == [20, 100]


def test_rows_and_fractions(store):
    np.testing.assert_array_equal(store.rows("train"), np.arange(6))
    frac = store.rows("train", 20)
    assert len(frac) >= 1 and set(frac) <= set(range(6))
    np.testing.assert_array_equal(store.rows("valid", 20), [6, 7])  # valid/test always whole
    np.testing.assert_array_equal(store.rows("test", 1), [8, 9])
    with pytest.raises(KeyError, match="fraction 10%"):
        store.rows("train", 10)
    with pytest.raises(ValueError, match="split"):
        store.rows("validate")


def test_labels_boxes_texts(store):
    np.testing.assert_array_equal(store.labels([0, 1, 5]), [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert store.labels([0]).dtype == np.float32
    boxes = store.boxes([0, 1])
    # 16 x 32 -> scale 0.5, new 8 x 16, pad_y 4: [0, 0, 8, 4] -> [0, 4, 4, 6]
    np.testing.assert_allclose(boxes[0], [[0, 4, 4, 6]])
    assert boxes[0].dtype == np.float32 and boxes[1].shape == (0, 4)
    assert store.texts([0, 9]) == ["text 0", ""]


def test_image_dataset_sample_values(store):
    ds = ImageDataset(store, store.rows("valid"), fields=("image", "label", "mask", "boxes", "text"))
    s = ds[0]
    assert s["row"] == 6 and s["text"] == "text 6"
    assert s["image"].shape == (1, 16, 16) and s["image"].dtype == torch.float32
    assert s["image"][0, 4:12].unique().tolist() == [pytest.approx(120 / 255)]
    assert s["image"][0, :4].abs().sum() == 0  # padding
    torch.testing.assert_close(s["label"], torch.tensor([1.0, 0.0, 0.0]))
    expected_mask = torch.zeros(1, 16, 16)
    expected_mask[0, 4:6, 0:4] = 1
    torch.testing.assert_close(s["mask"], expected_mask)
    torch.testing.assert_close(s["boxes"], torch.tensor([[0.0, 4.0, 4.0, 6.0]]))


def test_collate_and_loader(store):
    ds = ImageDataset(store, store.rows("train"), fields=("image", "label", "boxes", "text"))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=1)))
    assert batch["image"].shape == (4, 1, 16, 16) and batch["label"].shape == (4, 3)
    assert batch["row"].tolist() == [0, 1, 2, 3]
    assert isinstance(batch["boxes"], list) and len(batch["boxes"]) == 4 and batch["text"][1] == "text 1"


def test_v2_transform_moves_image_mask_and_boxes_together(store):
    from torchvision.transforms import v2

    ds = ImageDataset(store, [0], v2.RandomHorizontalFlip(p=1.0), fields=("image", "mask", "boxes"))
    plain = ImageDataset(store, [0], fields=("image", "mask", "boxes"))[0]
    s = ds[0]
    assert type(s["image"]) is torch.Tensor and type(s["boxes"]) is torch.Tensor
    torch.testing.assert_close(s["image"], plain["image"].flip(-1))
    torch.testing.assert_close(s["mask"], plain["mask"].flip(-1))
    torch.testing.assert_close(s["boxes"], torch.tensor([[12.0, 4.0, 16.0, 6.0]]))


def test_pickle_does_not_copy_arrays(store):
    _ = store.images[0]
    blob = pickle.dumps(ImageDataset(store, store.rows("train")))
    assert len(blob) < 5000
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again[1]["image"], ImageDataset(store, store.rows("train"))[1]["image"])


def test_errors(store, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.parquet"):
        PreparedDataset(tmp_path)
    with pytest.raises(ValueError, match="unknown fields"):
        ImageDataset(store, [0], fields=("pixels",))
