"""Report generation on a tiny store whose reports (the synthetic generator's sentences) describe the image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrbench.data.synthetic.latent import Finding
from cxrbench.data.synthetic.reports import sentence
from cxrbench.registry import TASKS
from cxrbench.tasks import report_generation as rg

PARAMS = {
    "datasets": ["mimic"], "tokenizer": "minilm", "vocab": "corpus", "max_length": 24, "max_new_tokens": 16,
    "decoder": {"name_or_path": None, "layers": 2, "width": 32, "heads": 2, "dropout": 0.0},
    "image_tokens": {"level": -1, "grid": None, "dtype": "float32"},
    "shuffled_baseline": {"enabled": True, "resamples": 200},
    "engine": {"epochs": 12, "batch_size": 16, "lr": 5e-3, "patience": 12, "progress": False, "precision": "fp32",
               "ckpt_every": 10_000},
}


def report(side: str, kind: str) -> str:
    finding = Finding(kind=kind, side=side, zone="lower", severity=2, certainty="present", instances=(), seed=0)
    return sentence(finding, np.random.default_rng(0))


class ReportStore:
    """A prepared-store stand-in with a manifest: a bright square on the left or right half (32 x 32) and a
    report naming the side; official split train 48 / valid 16 / test 32, store split test merged into valid."""

    def __init__(self, seed: int = 0, texts: list[str] | None = None) -> None:
        rng = np.random.default_rng(seed)
        n = 96
        left = rng.random(n) < 0.5
        kind = np.where(rng.random(n) < 0.5, "effusion", "pneumothorax")
        self.images = (rng.random((n, 32, 32)) * 40).astype(np.uint8)
        for i in range(n):
            self.images[i, 8:24, (2 if left[i] else 18) : (14 if left[i] else 30)] = 230
        official = np.array(["train"] * 48 + ["valid"] * 16 + ["test"] * 32, dtype=object)
        self.manifest = pd.DataFrame({
            "row": np.arange(n), "split": np.where(official == "test", "valid", official),
            "official_split": official,
            "text": texts or [report("left" if s else "right", k) for s, k in zip(left, kind, strict=True)],
        })
        self.name, self.size, self.masks, self.label_names, self.meta = "mimic", 32, None, [], {"dataset": "mimic"}

    def rows(self, split: str, fraction: int = 100) -> np.ndarray:
        rows = np.flatnonzero(self.manifest["split"].to_numpy() == split)
        return rows[: max(1, len(rows) * fraction // 100)] if split == "train" else rows

    def labels(self, rows):
        return np.zeros((len(rows), 0), np.float32)


@pytest.fixture
def vit(pretrained_factory, tiny_vit):
    return pretrained_factory(tiny_vit)  # a 2 x 2 patch grid of 12 channels at 32 px


def run(pre, tmp_path, name="run", seed=0, **over):
    params = {**PARAMS, **over, "cache_dir": str(tmp_path / "cache")}
    task = TASKS.get("report_generation")(params)
    return task.run(pre, ReportStore(), 100, seed, tmp_path / name), task


def test_decoder_beats_the_shuffled_image_control(vit, tmp_path) -> None:
    m, task = run(vit, tmp_path)
    assert task.n == {"train": 48, "valid": 16, "test": 32}
    # the side is only in the image: with the real image the decoder names it, with another image it guesses
    assert m["BLEU-4"] > m["BLEU-4/shuffled_image"] + 0.1
    assert m["ROUGE-L"] > m["ROUGE-L/shuffled_image"]
    assert m["BLEU-4/shuffled_image_p"] < 0.05
    pred = np.load(tmp_path / "run" / "predictions.npz")
    assert str(pred["kind"]) == "text" and pred["bleu_stats"].shape == (32, 10)
    np.testing.assert_array_equal(pred["row"], np.arange(64, 96))


def test_decoding_is_deterministic_and_seeded(vit, tmp_path) -> None:
    tokens = torch.randn(5, 16, 12)
    lm = rg.build_language_model(PARAMS["decoder"], type("V", (), {"size": 20, "bos": 0, "eos": 1, "pad": 2})(), 40, 3)
    model = rg.PrefixDecoder(lm, 12, None, 3)
    first = rg.greedy_decode(model, tokens, 0, 1, 12, batch_size=2)
    assert first == rg.greedy_decode(model, tokens, 0, 1, 12, batch_size=5)
    assert all(len(s) <= 12 and (1 not in s[:-1]) for s in first)
    # greedy = argmax of the full-sequence forward at each step (the key-value cache changes nothing)
    seq = torch.tensor([[0]])
    with torch.no_grad():
        for _ in range(len(first[0])):
            nxt = lm(inputs_embeds=model.embed(tokens[:1], seq)).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], 1)
    assert seq[0, 1:].tolist() == first[0]


def test_same_seed_same_metrics(vit, tmp_path) -> None:
    short = {"engine": {**PARAMS["engine"], "epochs": 2}}
    a, _ = run(vit, tmp_path, "a", **short)
    b, _ = run(vit, tmp_path, "b", **short)
    assert a == b


def test_missing_decoder_path_is_a_clear_error(vit, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"decoder\.name_or_path = '/nowhere/lm'.*nothing is downloaded"):
        run(vit, tmp_path, decoder={"name_or_path": "/nowhere/lm"}, vocab="full")
    (tmp_path / "lm").mkdir()
    with pytest.raises(ValueError, match="vocab: corpus re-indexes"):
        run(vit, tmp_path, decoder={"name_or_path": str(tmp_path / "lm")})


def test_bad_columns_and_leaked_training_rows_are_named(vit, tmp_path) -> None:
    with pytest.raises(KeyError, match=r"no column\(s\) \['findings'\]"):
        run(vit, tmp_path, text_columns=["findings"])
    store = ReportStore()
    store.manifest.loc[0, "official_split"] = "test"
    with pytest.raises(ValueError, match="1 training rows .* not in the official train split"):
        rg.split_rows(store, "train", 100, "official")


def test_vocabulary_round_trip_and_derangement() -> None:
    tok = rg.load_tokenizer("minilm", None)
    ids = rg.tokenize(tok, ["No pleural effusion.", "Small left pneumothorax."])
    vocab = rg.Vocabulary(tok, "corpus", ids)
    assert len(vocab) == 4 + len({i for s in ids for i in s})  # [CLS] [SEP] [PAD] [UNK] + the corpus's types
    packed, mask = rg.pack(vocab, ids, 6)
    assert packed[0, 0] == vocab.bos and mask.sum(1).tolist() == [min(len(s) + 2, 6) for s in ids]
    assert (packed[:, 5] == vocab.eos).all()  # both truncated to [BOS] + 4 tokens + [EOS]
    assert vocab.decode(rg.pack(vocab, ids, 40)[0][1, 1:].tolist()) == "small left pneumothorax."
    assert vocab.decode(vocab.encode(ids[0]) + [vocab.eos]) == "no pleural effusion."
    assert vocab.decode(vocab.encode(rg.tokenize(tok, ["No edema."])[0])) == "no."  # unseen word -> [UNK], dropped
    d = rg.derangement(7, 0)
    assert sorted(d.tolist()) == list(range(7)) and not (d == np.arange(7)).any()


def test_report_table_cells() -> None:
    import pandas as pd

    from cxrbench.report import tables

    rec = {"task": "report_generation", "dataset": "mimic", "fraction": 100, "method": "g2d", "n": 1, "sd": 0.0}
    summary = pd.DataFrame([
        {**rec, "metric": "BLEU-4", "mean": 0.2512, "low": 0.2, "high": 0.3},
        {**rec, "metric": "BLEU-4/shuffled_image", "mean": 0.1, "low": float("nan"), "high": float("nan")},
        {**rec, "metric": "BLEU-4/shuffled_image_p", "mean": 0.002, "low": float("nan"), "high": float("nan")},
    ])
    notes, table = tables.TASK_TABLES["report_generation"][1](summary, {"scale": "demo", "seeds": [0]})
    row = table.iloc[0].to_dict()
    assert row["method"] == "g2d" and row["fraction"] == "100%"
    assert row["BLEU-4"] == "25.1 [20.0, 30.0]" and row["BLEU-4, shuffled image"] == "10.0"
    assert row["ROUGE-L"] == "" and row["p (BLEU-4 vs shuffled)"] == "0.002"
    assert any("synthetic demo data" in n for n in notes)
