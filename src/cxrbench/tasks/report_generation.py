"""Report generation from a frozen encoder's image tokens (RAD-DINO's vision-language alignment evaluation).

RAD-DINO (Perez-Garcia et al., "Exploring scalable medical image encoders beyond text supervision", Nature Machine
Intelligence 2025, report-generation section) keeps the image encoder frozen, maps its last-layer patch tokens
through a trainable adapter into a language model's input-embedding space (the LLaVA-1.5 design: the projected
image tokens are a prefix of the LM's input) and scores generated findings on MIMIC-CXR's official test split with
lexical metrics (ROUGE-L, BLEU-4) beside clinical ones. This task keeps that design at any scale:

- image tokens: level ``image_tokens.level`` of the frozen backbone's pyramid (its last layer's map: a ViT's patch
  grid, a ResNet's stride-32 map), optionally average-pooled to ``image_tokens.grid`` x ``grid``, flattened to
  (N = h * w, C); computed once per (encoder, split, view) and cached on disk (``FeatureCache``), then reused by
  every fraction, seed and epoch. The view is the linear probe's deterministic test view.
- a trainable projection (linear, or LLaVA-1.5's two-layer GELU MLP with ``projector_hidden``) to the LM's width;
  the projected tokens are the prefix of the LM's input embeddings (prefix conditioning works with any causal LM
  of transformers; a GPT-2 built with cross-attention would tie the task to GPT-2-like models).
- the LM: with ``decoder.name_or_path: null`` a GPT-2 built from a config (``decoder.layers/width/heads``) and
  trained from scratch (the demo); otherwise a local pretrained causal LM directory (paper scale), nothing
  downloaded. The tokenizer: ``tokenizer`` (``minilm``: the all-MiniLM-L6-v2 tokenizer the project's text towers use;
  a local directory; null: the decoder directory's own). ``vocab: corpus`` re-indexes the output vocabulary to
  the token types of the training reports (plus the special tokens): a from-scratch decoder then pays for a
  ~10^2-word softmax instead of 30,522 entries; ``full`` keeps the tokenizer's vocabulary (a pretrained LM).
- training: teacher-forced next-token cross-entropy on ``[BOS] report [EOS]`` (truncated to ``max_length``
  tokens) through the shared engine, early stopping on the validation loss; every part but the encoder trains.
- test: greedy decoding (argmax, no sampling: deterministic) of at most ``max_new_tokens`` tokens, then
  BLEU-4 / ROUGE-L (:mod:`cxrbench.metrics.text`) against the reference. Both sides are the tokenizer's decoded
  round trip of the text (the MiniLM tokenizer lower-cases), so the metric compares words, not tokenizer artefacts.
- the shuffled-image control (``shuffled_baseline``): the same trained decoder decodes every test report from
  another test image's tokens (a seeded derangement); the paired bootstrap of BLEU-4(real) - BLEU-4(shuffled) over
  test reports says whether the text depends on the image beyond the corpus's common phrasing.

Data: MIMIC-CXR's reports as the prepared store keeps them (``text_columns``: manifest columns joined in order;
the MIMIC store's ``text`` is IMPRESSION + FINDINGS, :func:`cxrbench.data.reports.pretraining_text`). Splits
(``split_source: official``): mimic-cxr-2.0.0-split.csv as kept in the manifest's ``official_split`` column
(train / validate -> valid / test); the store's own split merges test into valid for pretraining. The training
fraction is the store's fraction of its train split (the official train split under the reference protocol).
Reports without text are left out of their split and counted (``skipped_no_text``). No report text is written to
the run directory (MIMIC-CXR is credentialed data): only metrics and per-report metric statistics.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.metrics import text as text_metrics
from cxrbench.registry import TASKS
from cxrbench.tasks import _predictions
from cxrbench.tasks._base import Task
from cxrbench.tasks._common import (
    FeatureCache,
    StoreDataset,
    batches,
    cache_key,
    classification_view,
    device_of,
    encoder_fingerprint,
    engine_config,
    resolve,
    seeded,
    task_image_size,
    to_input,
)

log = logging.getLogger(__name__)
KEY = "evaluate.tasks.report_generation"
OFFICIAL = {"train": "train", "valid": "valid", "test": "test"}  # official_split values (validate -> valid at prepare)

# ------------------------------------------------------------------------------------------------ data


def split_rows(store: Any, split: str, fraction: int, source: str) -> np.ndarray:
    """Rows of ``split``: the store's fraction of its train split; valid / test from the store's split
    (``source: store``) or the manifest's ``official_split`` column (``official``)."""
    if split == "train" or source == "store":
        rows = np.asarray(store.rows(split, fraction if split == "train" else 100), dtype=np.int64)
    elif source == "official":
        official = _official(store)
        rows = np.flatnonzero(official == OFFICIAL[split]).astype(np.int64)
    else:
        raise ValueError(f"{KEY}.split_source = {source!r}; expected 'official' or 'store'")
    if split == "train" and source == "official":
        leaked = rows[_official(store)[rows] != "train"]
        if len(leaked):
            raise ValueError(f"{store.root if hasattr(store, 'root') else store.name}: {len(leaked)} training rows "
                             f"(e.g. {leaked[:5].tolist()}) are not in the official train split; with "
                             "data.split_protocol other than 'reference' set split_source: store")
    return rows


def _official(store: Any) -> np.ndarray:
    m = store.manifest
    if "official_split" not in m.columns:
        raise KeyError(f"{getattr(store, 'root', store.name)}/manifest.parquet has no column 'official_split' "
                       f"(columns: {list(m.columns)}); set {KEY}.split_source: store")
    return m["official_split"].astype(object).to_numpy()


def target_texts(store: Any, rows: np.ndarray, columns: Sequence[str]) -> list[str]:
    """Per row the manifest ``columns`` joined by a space (missing values skipped)."""
    m = store.manifest
    missing = [c for c in columns if c not in m.columns]
    if missing:
        raise KeyError(f"{getattr(store, 'root', store.name)}/manifest.parquet has no column(s) {missing} "
                       f"({KEY}.text_columns; columns: {list(m.columns)})")
    parts = [[v if isinstance(v, str) else "" for v in m[c].to_numpy()[rows]] for c in columns]
    return [" ".join(p.strip() for p in texts if p.strip()) for texts in zip(*parts, strict=True)]


# ------------------------------------------------------------------------------------------------ image tokens


@torch.no_grad()
def extract_tokens(backbone: nn.Module, store: Any, rows: np.ndarray, *, size: int, crop_ratio: float,
                   normalize: Mapping[str, Any], level: int, grid: int | None, batch_size: int) -> torch.Tensor:
    """(n, N, C) float32 image tokens of ``rows``: pyramid level ``level`` (B, C, h, w) of the frozen backbone on
    the deterministic test view, average-pooled to (grid, grid) when ``grid`` is set, flattened row-major."""
    was = backbone.training
    backbone.eval()
    out = []
    for batch in batches(StoreDataset(store, rows), batch_size):
        x = to_input(classification_view(batch["image"], size, crop_ratio, None), normalize)
        fmap = backbone(x.to(device_of(backbone))).pyramid[level].float()
        if grid:
            fmap = F.adaptive_avg_pool2d(fmap, grid)
        out.append(fmap.flatten(2).transpose(1, 2).cpu())
    backbone.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0, 0)


def image_tokens(cache: FeatureCache, pretrained: Any, store: Any, split: str, rows: np.ndarray,
                 p: Mapping[str, Any], fingerprint: str) -> torch.Tensor:
    """Cached :func:`extract_tokens` of a split's rows (stored in ``image_tokens.dtype``), returned as float32."""
    t = dict(p.get("image_tokens") or {})
    level, grid, dtype = int(t.get("level", -1)), t.get("grid"), str(t.get("dtype", "float32"))
    size, crop_ratio = task_image_size(p, pretrained), float(p.get("crop_ratio", 0.875))
    key = cache_key(fingerprint, store, f"{p.get('split_source', 'official')}_{split}", image_size=size,
                    transform=f"resize{round(size / crop_ratio)}-centrecrop{size}",
                    normalize=dict(pretrained.normalize), tokens=f"pyramid{level}-grid{grid}-{dtype}",
                    n_split_rows=len(rows))

    def compute() -> dict[str, torch.Tensor]:
        feats = extract_tokens(pretrained.backbone, store, rows, size=size, crop_ratio=crop_ratio,
                               normalize=pretrained.normalize, level=level, grid=grid,
                               batch_size=int(p.get("feature_batch_size", 64)))
        return {"rows": torch.from_numpy(np.asarray(rows, dtype=np.int64)), "features": feats.to(getattr(torch, dtype))}

    entry = cache.get(key, compute)
    if not np.array_equal(entry["rows"].numpy(), rows):
        raise ValueError(f"image-token cache entry for split {split!r} holds other rows than the split's")
    return entry["features"].float()


# ------------------------------------------------------------------------------------------------ text


class Vocabulary:
    """Tokenizer ids <-> the decoder's ids. ``ids`` (V,) tokenizer id of each decoder id: the whole tokenizer
    (``full``) or the special tokens then the sorted token types of ``corpus`` (``corpus``); unknown ids map to
    the unknown token. ``bos`` / ``eos`` / ``pad`` / ``unk`` are decoder ids."""

    def __init__(self, tokenizer: Any, mode: str, corpus: Sequence[Sequence[int]] = ()) -> None:
        self.tokenizer = tokenizer
        special = special_ids(tokenizer)
        if mode == "full":
            ids = list(range(len(tokenizer)))
        elif mode == "corpus":
            seen = sorted({int(i) for seq in corpus for i in seq} - set(special.values()))
            ids = list(dict.fromkeys(special.values())) + seen
        else:
            raise ValueError(f"{KEY}.vocab = {mode!r}; expected 'corpus' or 'full'")
        self.ids = torch.as_tensor(ids, dtype=torch.long)
        self.index = {t: i for i, t in enumerate(ids)}
        self.bos, self.eos, self.pad, self.unk = (self.index[special[k]] for k in ("bos", "eos", "pad", "unk"))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        return len(self.ids)

    def encode(self, token_ids: Sequence[int]) -> list[int]:
        return [self.index.get(int(t), self.unk) for t in token_ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Decoder ids -> text, up to the first EOS, special tokens dropped."""
        ids = list(ids)
        ids = ids[: ids.index(self.eos)] if self.eos in ids else ids
        return str(self.tokenizer.decode(self.ids[ids].tolist(), skip_special_tokens=True)).strip()


def special_ids(tokenizer: Any) -> dict[str, int]:
    """Tokenizer ids of bos (else cls), eos (else sep), pad (else eos) and unk (else eos)."""
    bos = _first(tokenizer, "bos_token_id", "cls_token_id")
    eos = _first(tokenizer, "eos_token_id", "sep_token_id")
    if bos is None or eos is None:
        raise ValueError(f"{KEY}: the tokenizer has no bos/cls or no eos/sep token; use one that has both")
    pad = _first(tokenizer, "pad_token_id")
    unk = _first(tokenizer, "unk_token_id")
    return {"bos": bos, "eos": eos, "pad": eos if pad is None else pad, "unk": eos if unk is None else unk}


def _first(tokenizer: Any, *names: str) -> int | None:
    values = [getattr(tokenizer, n, None) for n in names]
    return next((int(v) for v in values if v is not None), None)


def tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Tokenizer ids of each text, no special tokens, not truncated."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def pack(vocab: Vocabulary, token_ids: Sequence[Sequence[int]], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (n, L), mask (n, L)): ``[BOS] tokens [EOS]`` in decoder ids, at most ``max_length``, right-padded."""
    seqs = [[vocab.bos, *vocab.encode(t)[: max_length - 2], vocab.eos] for t in token_ids]
    width = max((len(s) for s in seqs), default=2)
    ids = torch.full((len(seqs), width), vocab.pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.as_tensor(s), 1
    return ids, mask


def references(tokenizer: Any, token_ids: Sequence[Sequence[int]]) -> list[str]:
    """The reference texts as the tokenizer decodes them (the hypotheses' normal form)."""
    return [str(tokenizer.decode(list(t), skip_special_tokens=True)).strip() for t in token_ids]


def load_tokenizer(name: str | None, decoder_path: str | None) -> Any:
    """``minilm`` (the text towers' all-MiniLM-L6-v2 tokenizer), a local directory, or null: the decoder's own."""
    from transformers import AutoTokenizer

    from cxrbench.models.text import minilm_dir

    source = decoder_path if name is None else (str(minilm_dir()) if name == "minilm" else name)
    if source is None:
        raise ValueError(f"{KEY}.tokenizer is null but decoder.name_or_path is null too: name a tokenizer "
                         "('minilm' or a local directory)")
    _require_dir(source, f"{KEY}.tokenizer" if name is not None else f"{KEY}.decoder.name_or_path")
    return AutoTokenizer.from_pretrained(source, local_files_only=True)


def _require_dir(path: str, key: str) -> None:
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"{key} = {path!r}: no such local directory; nothing is downloaded at run time. Download the model "
            f"on a connected machine (`hf download <model> --local-dir <dir>`), copy it here and set {key} to it")


# ------------------------------------------------------------------------------------------------ decoder


def build_language_model(cfg: Mapping[str, Any], vocab: Vocabulary, n_positions: int, seed: int) -> nn.Module:
    """A causal LM: GPT-2 from ``decoder.layers/width/heads/dropout`` (seeded init, exact GELU) when
    ``decoder.name_or_path`` is null, else the local pretrained model directory (``AutoModelForCausalLM``, local
    files only)."""
    path = cfg.get("name_or_path")
    if path:
        from transformers import AutoModelForCausalLM

        _require_dir(str(path), f"{KEY}.decoder.name_or_path")
        return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    from transformers import GPT2Config, GPT2LMHeadModel

    drop = float(cfg.get("dropout", 0.1))
    gpt = GPT2Config(vocab_size=vocab.size, n_positions=n_positions, n_embd=int(cfg["width"]),
                     n_layer=int(cfg["layers"]), n_head=int(cfg["heads"]), n_inner=4 * int(cfg["width"]),
                     activation_function="gelu", resid_pdrop=drop, embd_pdrop=drop, attn_pdrop=drop,
                     bos_token_id=vocab.bos, eos_token_id=vocab.eos, pad_token_id=vocab.pad)
    with seeded(seed):
        return GPT2LMHeadModel(gpt)


class PrefixDecoder(nn.Module):
    """Projected image tokens as the prefix of a causal LM's input embeddings.

    ``forward((tokens (B, N, C), ids (B, L), mask (B, L))) -> {"loss"}``: mean next-token cross-entropy over the
    real text positions 1..L-1 (the prefix and padding carry no loss)."""

    def __init__(self, lm: nn.Module, in_dim: int, hidden: int | None, seed: int) -> None:
        super().__init__()
        self.lm = lm
        width = int(lm.get_input_embeddings().embedding_dim)
        with seeded(seed):
            self.proj = (nn.Linear(in_dim, width) if not hidden else
                         nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, width)))

    def embed(self, tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, N, C), (B, L) -> (B, N + L, width)."""
        return torch.cat([self.proj(tokens), self.lm.get_input_embeddings()(ids)], 1)

    def logits(self, tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L - 1, V) next-token logits for text positions 1..L-1."""
        n = tokens.shape[1]
        att = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, n), mask[:, :-1]], 1)
        return self.lm(inputs_embeds=self.embed(tokens, ids[:, :-1]), attention_mask=att).logits[:, n:]

    def forward(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        dev = device_of(self)
        tokens, ids, mask = (t.to(dev) for t in batch)
        logits = self.logits(tokens, ids, mask)
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        return {"loss": F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100)}


@torch.no_grad()
def greedy_decode(model: PrefixDecoder, tokens: torch.Tensor, bos: int, eos: int, max_new_tokens: int,
                  batch_size: int = 64) -> list[list[int]]:
    """Greedy (argmax) decoding from ``[prefix, BOS]`` with the LM's key-value cache: per image (N, C) of
    ``tokens`` (n, N, C) the decoder ids generated up to and including EOS, at most ``max_new_tokens``."""
    was = model.training
    model.eval()
    out: list[list[int]] = []
    for start in range(0, len(tokens), batch_size):
        out += _greedy_batch(model, tokens[start : start + batch_size].to(device_of(model)), bos, eos, max_new_tokens)
    model.train(was)
    return out


def _cache_name(lm: nn.Module) -> str:
    """The key-value cache argument / output of the LM's forward: ``cache`` (transformers >= 5.2x), else the
    older ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def _greedy_batch(model: PrefixDecoder, tokens: torch.Tensor, bos: int, eos: int, steps: int) -> list[list[int]]:
    b, name = len(tokens), _cache_name(model.lm)
    start = torch.full((b, 1), bos, dtype=torch.long, device=tokens.device)
    res = model.lm(inputs_embeds=model.embed(tokens, start), use_cache=True)
    done = torch.zeros(b, dtype=torch.bool, device=tokens.device)
    generated = []
    for _ in range(steps):
        nxt = res.logits[:, -1].argmax(-1).masked_fill(done, eos)
        generated.append(nxt)
        done |= nxt == eos
        if bool(done.all()):
            break
        emb = model.lm.get_input_embeddings()(nxt[:, None])
        res = model.lm(inputs_embeds=emb, use_cache=True, **{name: res[name]})
    seqs = torch.stack(generated, 1).tolist() if generated else [[] for _ in range(b)]
    return [s[: s.index(eos) + 1] if eos in s else s for s in seqs]


def trim(tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the padding columns every sequence of the batch has: (B, N, C), (B, L'), (B, L')."""
    width = max(int(mask.sum(1).max()), 2) if len(mask) else 2
    return tokens, ids[:, :width], mask[:, :width]


def trim_collate(items: Sequence[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """The engine's collate: stack (tokens, ids, mask) items and :func:`trim` the batch."""
    return trim(*(torch.stack(column) for column in zip(*items, strict=True)))


def teacher_forced_loss(model: PrefixDecoder, data: Sequence[torch.Tensor], batch_size: int = 64) -> float:
    """Token-weighted mean cross-entropy of ``data`` (tokens, ids, mask) in eval mode."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data[0]), batch_size):
            part = trim(*(t[start : start + batch_size] for t in data))
            n = int(part[2][:, 1:].sum())
            total += float(model(part)["loss"]) * n
            count += n
    model.train(was)
    return total / max(count, 1)


# ------------------------------------------------------------------------------------------------ task


def check_decoder(cfg: Mapping[str, Any], vocab: str) -> None:
    """Fail before any work: a pretrained decoder must be a local directory and keeps its full vocabulary."""
    path = cfg.get("name_or_path")
    if path:
        _require_dir(str(path), f"{KEY}.decoder.name_or_path")
        if vocab == "corpus":
            raise ValueError(f"{KEY}.vocab: corpus re-indexes the output vocabulary, which only a decoder trained "
                             "from scratch (decoder.name_or_path: null) can use; set vocab: full")


def derangement(n: int, seed: int) -> np.ndarray:
    """(n,) a seeded permutation without fixed points (n >= 2): image ``out[i]`` conditions report i."""
    order = np.random.default_rng([seed, 15]).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, -1)
    return out


def score(vocab: Vocabulary, generated: Sequence[Sequence[int]], refs: Sequence[str]) -> tuple[dict, dict]:
    """({"BLEU-4", "ROUGE-L"}, per-report {"bleu_stats" (n, 10), "rouge_l" (n,)}) of decoded hypotheses."""
    hyps = [vocab.decode(g) for g in generated]
    parts = {"bleu_stats": text_metrics.bleu_stats(hyps, refs), "rouge_l": text_metrics.rouge_l(hyps, refs)}
    return text_metrics.text_metrics(hyps, refs), parts


@TASKS.register("report_generation")
class ReportGeneration(Task):
    name = "report_generation"
    relative_cost = 15
    datasets = ("mimic",)
    metric_forms = {
        **text_metrics.FORMS,
        "BLEU-4/shuffled_image": "BLEU-4 of the same decoder fed another test image's tokens (seeded derangement)",
        "ROUGE-L/shuffled_image": "ROUGE-L of the same decoder fed another test image's tokens",
        "BLEU-4/shuffled_image_p": "two-sided paired-bootstrap p of BLEU-4 - BLEU-4/shuffled_image over test reports",
        "skipped_no_text": "reports left out of their split because their target text is empty",
    }

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.cache = FeatureCache(params.get("cache_dir"))
        self.n: dict[str, int] = {}

    def split_data(self, pretrained: Any, store: Any, fraction: int, p: Mapping[str, Any]) -> dict[str, Any]:
        """{split: (rows (n,), texts [n])} with empty texts left out; the count left out in ``self.skipped``."""
        out, self.skipped = {}, 0
        fingerprint = encoder_fingerprint(pretrained.backbone)
        for split in ("train", "valid", "test"):
            rows = split_rows(store, split, fraction, str(p.get("split_source", "official")))
            all_rows = split_rows(store, split, 100, str(p.get("split_source", "official")))
            texts = target_texts(store, rows, list(p.get("text_columns", ["text"])))
            keep = np.array([bool(t) for t in texts], dtype=bool)
            self.skipped += int((~keep).sum())
            tokens = image_tokens(self.cache, pretrained, store, split, all_rows, p, fingerprint)
            pos = np.searchsorted(all_rows, rows[keep])
            out[split] = (rows[keep], [t for t, k in zip(texts, keep, strict=True) if k], tokens[torch.as_tensor(pos)])
        if self.skipped:
            log.warning("report_generation: %d reports without target text left out", self.skipped)
        return out

    def run(self, pretrained: Any, data: Any, fraction: int, seed: int, out_dir: Path) -> dict[str, Any]:
        from cxrbench.engine import fit

        p = resolve(self.params, str(data.name), fraction)
        dec_cfg, mode = dict(p.get("decoder") or {}), str(p.get("vocab", "corpus"))
        check_decoder(dec_cfg, mode)
        tokenizer = load_tokenizer(p.get("tokenizer", "minilm"), dec_cfg.get("name_or_path"))
        splits = self.split_data(pretrained, data, fraction, p)
        self.n = {s: len(v[0]) for s, v in splits.items()}
        if min(self.n.values()) == 0:
            raise ValueError(f"report_generation on {data.name!r} at {fraction}%: empty split(s) {self.n}")
        token_ids = {s: tokenize(tokenizer, v[1]) for s, v in splits.items()}
        vocab = Vocabulary(tokenizer, mode, token_ids["train"])
        max_len, max_new = int(p.get("max_length", 64)), int(p.get("max_new_tokens", 64))
        packed = {s: (splits[s][2], *pack(vocab, token_ids[s], max_len)) for s in ("train", "valid")}
        n_img = splits["train"][2].shape[1]
        lm = build_language_model(dec_cfg, vocab, n_img + max(max_len, max_new + 1), seed)
        model = PrefixDecoder(lm, splits["train"][2].shape[2], p.get("projector_hidden"), seed)
        cfg = engine_config(p, monitor="val_loss", mode="min")
        fit(model, torch.utils.data.TensorDataset(*packed["train"]), cfg, Path(out_dir) / "train", seed=seed,
            collate_fn=trim_collate, val_fn=lambda m: {"val_loss": teacher_forced_loss(m, packed["valid"])})
        return self.evaluate(model, vocab, splits["test"], references(tokenizer, token_ids["test"]), p, seed, out_dir)

    def evaluate(self, model: PrefixDecoder, vocab: Vocabulary, test: tuple, refs: list[str], p: Mapping[str, Any],
                 seed: int, out_dir: Path) -> dict[str, Any]:
        """Metrics on the test split (and the shuffled-image control); writes the per-report statistics."""
        rows, _, tokens = test
        max_new, bs = int(p.get("max_new_tokens", 64)), int(p.get("decode_batch_size", 64))
        metrics, parts = score(vocab, greedy_decode(model, tokens, vocab.bos, vocab.eos, max_new, bs), refs)
        shuffled = dict(p.get("shuffled_baseline") or {})
        if shuffled.get("enabled", True) and len(rows) >= 2:
            control = tokens[torch.as_tensor(derangement(len(rows), seed))]
            base, base_parts = score(vocab, greedy_decode(model, control, vocab.bos, vocab.eos, max_new, bs), refs)
            metrics.update({f"{k}/shuffled_image": v for k, v in base.items()})
            metrics["BLEU-4/shuffled_image_p"] = self.paired_p(parts, base_parts, int(shuffled.get("resamples", 1000)),
                                                               seed)
        _predictions.save_predictions(out_dir, "text", rows, **parts)
        return {**metrics, "skipped_no_text": float(self.skipped)}

    @staticmethod
    def paired_p(parts: dict, base: dict, resamples: int, seed: int) -> float:
        from cxrbench.metrics import stats

        entry = text_metrics.statistics(parts)["BLEU-4"]
        res = stats.paired_bootstrap(parts["bleu_stats"], base["bleu_stats"], parts["bleu_stats"], entry[2],
                                     resamples, seed)
        return float(res["p"])
