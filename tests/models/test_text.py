"""Text encoders: MiniLM output and semantics, WordPiece determinism and round trip, freezing, errors."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from cxrbench.models.text import build_text_encoder, learn_wordpiece_vocab, pool_tokens, train_wordpiece

CORPUS = [
    "no acute cardiopulmonary process",
    "small left pleural effusion with adjacent atelectasis",
    "the heart size is normal and the lungs are clear",
    "moderate cardiomegaly with mild pulmonary edema",
    "right upper lobe pneumonia is suspected",
] * 4


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder("minilm", max_length=32)


def test_minilm_shapes(minilm):
    out = minilm(["the heart is enlarged", "normal"])
    assert minilm.hidden_size == 384
    L = out.attention_mask.shape[1]
    assert out.cls.shape == (2, 384) and out.tokens.shape == (2, L, 384)
    # [CLS] the heart is enlarged [SEP] / [CLS] normal [SEP]
    assert out.attention_mask.sum(1).tolist() == [6, 3]
    assert torch.equal(out.cls, out.tokens[:, 0])
    long = minilm(["word " * 100])
    assert long.tokens.shape[1] == 32  # truncated to max_length


def test_minilm_semantics(minilm):
    out = minilm(["The heart is enlarged.", "Cardiomegaly is present.", "The weather is sunny today."])
    for v in (out.mean(), out.cls):
        v = F.normalize(v, dim=-1)
        paraphrase, unrelated = (v[0] @ v[1]).item(), (v[0] @ v[2]).item()
        assert paraphrase > unrelated + 0.2


def test_text_output_mean_ignores_padding(minilm):
    out = minilm(["a b c d e f", "a"])
    n = int(out.attention_mask[1].sum())
    assert torch.allclose(out.mean()[1], out.tokens[1, :n].mean(0), atol=1e-6)


def test_pool_tokens_by_hand():
    values = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                           [[5.0, 6.0], [200.0, 200.0], [300.0, 300.0]]])  # (2, 3, 2); padding holds big values
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert pool_tokens(values, mask, "cls").tolist() == [[1.0, 2.0], [5.0, 6.0]]
    assert pool_tokens(values, mask, "mean").tolist() == [[2.0, 3.0], [5.0, 6.0]]  # (1+3)/2, (2+4)/2; row 2 alone
    with pytest.raises(ValueError, match="text.pooling must be one of"):
        pool_tokens(values, mask, "max")
    with pytest.raises(ValueError, match="text.pooling must be one of"):
        build_text_encoder("minilm", max_length=16, pooling="first")


def _mean_offdiagonal_cosine(v: torch.Tensor) -> float:
    v = F.normalize(v.double(), dim=-1)
    s = v @ v.t()
    n = len(s)
    return float((s.sum() - s.diag().sum()) / (n * n - n))


def test_lower_minilm_layers_give_every_report_the_same_cls():
    """Why the demo pools by the token mean (params.yaml, text.pooling): after MiniLM's first 2 layers, the [CLS]
    state of different reports is nearly one vector, while their token means differ."""
    reports = [r.capitalize() + "." for r in CORPUS[:5]] + ["Severe emphysema is present. No pleural effusion.",
                                                            "There is moderate hiatal hernia. No pneumothorax."]
    two = build_text_encoder("minilm", max_length=64, keep_layers=2, pooling="mean").eval()
    with torch.no_grad():
        out = two(reports)
    assert out.pooling == "mean" and torch.equal(out.pooled(), out.mean())
    assert 1 - _mean_offdiagonal_cosine(out.cls) < 1e-3  # measured ~1e-5
    assert 1 - _mean_offdiagonal_cosine(out.pooled()) > 5e-2  # measured ~0.2
    assert build_text_encoder("minilm", max_length=16).pooling == "cls"  # the papers' default


def _trainable(enc):
    return {n for n, p in enc.named_parameters() if p.requires_grad}


def test_freeze_layers_counts(minilm):
    enc = build_text_encoder("minilm", freeze_layers=4)
    names = {n for n, _ in enc.named_parameters()}
    frozen = {n for n in names if n.startswith("model.embeddings.")}
    frozen |= {n for n in names for i in range(4) if n.startswith(f"model.encoder.layer.{i}.")}
    assert len(frozen) == 5 + 4 * 16  # word/pos/type embeddings + LayerNorm(2); 16 tensors per BERT layer
    assert _trainable(enc) == names - frozen
    assert _trainable(minilm) == names  # freeze_layers=0
    with pytest.raises(ValueError, match="only 6 layers"):
        build_text_encoder("minilm", freeze_layers=7)


def test_freeze_all_runs_without_grad():
    enc = build_text_encoder("minilm", freeze_layers="all").train()
    assert _trainable(enc) == set()
    assert not enc.model.training  # dropout stays off
    out = enc(["pleural effusion"])
    assert not out.cls.requires_grad
    assert torch.equal(out.cls, enc(["pleural effusion"]).cls)


def test_learn_wordpiece_vocab_by_hand():
    # "abab" x3, "abc" x1 -> pairs (a,##b): 4, (##b,##a): 3, (##a,##b): 3, (##b,##c): 1 -> merge "ab";
    # then [ab ##a ##b] x3, [ab ##c] x1: (##a,##b) 3 ties (ab,##a) 3, "##a" < "ab" -> "##ab";
    # then (ab,##ab) 3 -> "abab", (ab,##c) 1 -> "abc".
    words = Counter({"abab": 3, "abc": 1})
    vocab = learn_wordpiece_vocab(words, vocab_size=100)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    alphabet = ["##a", "##b", "##c", "a"]
    assert vocab[:9] == specials + alphabet
    assert vocab[9:] == ["ab", "##ab", "abab", "abc"]
    assert learn_wordpiece_vocab(words, vocab_size=10) == specials + alphabet + ["ab"]


def test_wordpiece_vocab_is_deterministic():
    a = train_wordpiece(CORPUS, vocab_size=120, max_length=16)
    b = train_wordpiece(list(CORPUS), vocab_size=120, max_length=16)
    assert a.get_vocab() == b.get_vocab()
    assert a.token_to_id("[PAD]") == 0 and a.token_to_id("[CLS]") == 2
    ids = a.encode("pleural effusion").ids
    assert ids[0] == 2 and ids[-1] == 3
    assert a.decode(ids) == "pleural effusion"


def test_wordpiece_bert_seeded_without_global_rng_leak():
    state = torch.get_rng_state()
    a = build_text_encoder(
        "wordpiece-bert", corpus=CORPUS, vocab_size=120, hidden_size=32, num_heads=2, seed=5
    )
    assert torch.equal(state, torch.get_rng_state())
    b = build_text_encoder(
        "wordpiece-bert", corpus=CORPUS, vocab_size=120, hidden_size=32, num_heads=2, seed=5
    )
    c = build_text_encoder(
        "wordpiece-bert", corpus=CORPUS, vocab_size=120, hidden_size=32, num_heads=2, seed=6
    )
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.hidden_size == 32 and a.model.embeddings.word_embeddings.weight.shape == (120, 32)


def test_wordpiece_bert_round_trip(tmp_path):
    enc = build_text_encoder(
        "wordpiece-bert", corpus=CORPUS, vocab_size=120, hidden_size=32, max_length=16
    ).eval()
    torch.save({"config": enc.config, "state_dict": enc.state_dict()}, tmp_path / "text.pt")
    ck = torch.load(tmp_path / "text.pt", weights_only=True)
    back = build_text_encoder(**ck["config"]).eval()  # no corpus: the vocabulary comes from the state dict
    assert back.vocab != enc.vocab
    back.load_state_dict(ck["state_dict"])
    assert back.vocab == enc.vocab and len(enc.vocab) > len(CORPUS[0].split())
    texts = ["small pleural effusion", "unseen words zzz"]
    assert torch.equal(back.tokenize(texts)[0], enc.tokenize(texts)[0])
    assert torch.equal(back(texts).tokens, enc(texts).tokens)


def test_missing_model_message():
    with pytest.raises(FileNotFoundError) as err:
        build_text_encoder("no-such-org/no-such-model")
    msg = str(err.value)
    assert "no-such-org/no-such-model" in msg and "nothing is downloaded" in msg
    assert "huggingface-cli download no-such-org/no-such-model" in msg


def test_local_directory_loads_like_a_name(tmp_path, minilm):
    minilm.model.save_pretrained(tmp_path)
    minilm.tokenizer.save_pretrained(tmp_path)
    enc = build_text_encoder(str(tmp_path), max_length=32).eval()
    texts = ["mild cardiomegaly"]
    assert torch.allclose(enc(texts).cls, minilm.eval()(texts).cls, atol=1e-6)
