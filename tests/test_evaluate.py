import json

import numpy as np
import pytest
import torch
from torch import nn

import cxrbench.evaluate as ev
from cxrbench.methods._base import Pretrained
from cxrbench.models._base import Backbone, BackboneOutput


class MeanBackbone(Backbone):
    """pooled = (mean of the top half, mean of the bottom half)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.out_dim, self.pyramid_channels, self.pyramid_strides = 2, [3], [1]

    def forward(self, x):
        h = x.shape[-2] // 2
        return BackboneOutput(torch.stack([x[:, 0, :h].mean((1, 2)), x[:, 0, h:].mean((1, 2))], 1) * self.w, [x])


class Store:
    name, label_names, label_kind, size, masks = "chexpert", ["Atelectasis", "Edema"], "multilabel", 16, None
    meta = {"dataset": "chexpert"}

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.y = rng.integers(0, 2, size=(30, 2)).astype(np.float32)
        self.y[:6] = [[0, 0], [1, 1], [0, 1], [1, 0], [0, 1], [1, 0]]
        self.images = np.full((30, 16, 16), 30, np.uint8)
        self.images[:, :8] += (self.y[:, :1] * 200).astype(np.uint8)[:, :, None]
        self.images[:, 8:] += (self.y[:, 1:] * 200).astype(np.uint8)[:, :, None]
        self.split = np.array(["train", "valid", "test"] * 10)

    def rows(self, split, fraction=100):
        return np.flatnonzero(self.split == split)

    def labels(self, rows):
        return self.y[rows]


@pytest.fixture
def patched(monkeypatch):
    pre = Pretrained(method="random", backbone=MeanBackbone(), image_size=16, normalize={"mean": 0.5, "std": 0.5})
    monkeypatch.setattr(ev, "load_pretrained", lambda path, full=True: pre)
    monkeypatch.setattr(ev, "checkpoint_method", lambda path: "random")
    monkeypatch.setattr(ev, "open_dataset", lambda path: Store())
    return pre


def call(tmp_path, task, **kw):
    params = {
        "datasets": ["chexpert"],
        "crop_ratio": 1.0,
        "engine": {"epochs": 10, "batch_size": 4, "lr": 0.1, "progress": False},
    }
    return ev.run_evaluation(
        ckpt_dir=tmp_path / "ckpt",
        task=task,
        dataset_dir=tmp_path / "data",
        dataset="chexpert",
        fraction=100,
        seed=0,
        task_params=params,
        out_dir=tmp_path / "run",
        cache_dir=tmp_path / "features",
        **kw,
    )


def test_metrics_json_schema(patched, tmp_path):
    rec = call(tmp_path, "linear")
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk == rec
    assert set(rec) == {"run", "status", "reason", "metrics", "metric_forms", "n", "seconds", "cpu_seconds",
                        "max_rss_mb"}
    assert rec["run"] == {"method": "random", "task": "linear", "dataset": "chexpert", "fraction": 100, "seed": 0}
    assert rec["status"] == "ok" and rec["reason"] is None
    assert rec["metrics"]["AUROC"] == 1.0 and {"AUROC/Atelectasis", "AUROC/Edema"} <= set(rec["metrics"])
    assert "AUROC" in rec["metric_forms"] and rec["n"] == {"train": 10, "valid": 10, "test": 10}
    assert rec["seconds"] > 0 and rec["cpu_seconds"] > 0 and rec["max_rss_mb"] > 10
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["task_params"]["cache_dir"] == str(tmp_path / "features") and cfg["run"] == rec["run"]
    assert len(list((tmp_path / "features").glob("*.pt"))) == 3  # train / valid / test features cached
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_not_applicable_is_recorded(patched, tmp_path):
    rec = call(tmp_path, "zeroshot")
    assert rec["status"] == "not_applicable" and "text tower" in rec["reason"] and rec["metrics"] == {}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "not_applicable"


def test_wrong_dataset_is_an_error(patched, tmp_path):
    with pytest.raises(ValueError, match="holds dataset 'chexpert'"):
        ev.run_evaluation(
            ckpt_dir=tmp_path,
            task="linear",
            dataset_dir=tmp_path,
            dataset="rsna",
            fraction=100,
            seed=0,
            task_params={},
            out_dir=tmp_path / "run",
        )
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_nan_is_written_as_null(tmp_path):
    ev.write_json_atomic(tmp_path / "m.json", {"a": float("nan"), "b": np.float32(0.5)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": 0.5}


@pytest.mark.parametrize(("method", "task", "needs"), [("random", "zeroshot", "text tower"),
                                                        ("convirt", "segmentation_ed", "pretrained decoder")])
def test_not_applicable_is_decided_before_anything_is_loaded(monkeypatch, tmp_path, method, task, needs):
    def refuse(*args, **kwargs):
        raise AssertionError("a run that cannot apply must not load the checkpoint or the dataset")

    monkeypatch.setattr(ev, "checkpoint_method", lambda path: method)
    monkeypatch.setattr(ev, "load_pretrained", refuse)
    monkeypatch.setattr(ev, "open_dataset", refuse)
    rec = ev.run_evaluation(ckpt_dir=tmp_path / "ckpt", task=task, dataset_dir=tmp_path / "data", dataset="siim",
                            fraction=100, seed=0, task_params={}, out_dir=tmp_path / "run")
    assert rec["status"] == "not_applicable" and needs in rec["reason"] and method in rec["reason"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "not_applicable"


def test_checkpoint_method_reads_config_then_encoder(tmp_path):
    from cxrbench.pretrain import checkpoint_method

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text(json.dumps({"method": "g2d"}))
    assert checkpoint_method(tmp_path / "a") == "g2d"
    (tmp_path / "b").mkdir()
    torch.save({"method": "mflag", "state_dict": {}}, tmp_path / "b" / "encoder.pt")
    assert checkpoint_method(tmp_path / "b") == "mflag"
    with pytest.raises(FileNotFoundError, match="encoder.pt"):
        checkpoint_method(tmp_path / "c")
