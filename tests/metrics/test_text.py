"""BLEU-4 and ROUGE-L against values derived here in plain Python (n-gram clipping, brevity penalty, LCS)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from cxrbench.metrics import stats
from cxrbench.metrics import text as T

HYPS = ["the cat sat on the mat", "there is a small left effusion", "no pneumothorax"]
REFS = ["the cat is on the mat", "there is a small right effusion", "no pneumothorax is seen"]


def ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu_by_hand(hyps: list[str], refs: list[str]) -> float:
    """Papineni et al.: clipped n-gram precisions summed over the corpus, geometric mean, brevity penalty."""
    match, total, c, r = [0] * 4, [0] * 4, 0, 0
    for h, ref in zip(hyps, refs, strict=True):
        hw, rw = h.split(), ref.split()
        c, r = c + len(hw), r + len(rw)
        for n in range(1, 5):
            hn, rn = ngrams(hw, n), ngrams(rw, n)
            match[n - 1] += sum(min(k, rn[g]) for g, k in hn.items())
            total[n - 1] += sum(hn.values())
    if min(match) == 0:
        return 0.0
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(sum(math.log(m / t) for m, t in zip(match, total, strict=True)) / 4)


def lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_bleu4_matches_the_hand_computed_corpus_value() -> None:
    # by hand: clipped 1..4-gram matches 5+5+2 / 3+3+1 / 1+2+0 / 0+1+0 of 6+6+2 / 5+5+1 / 4+4+0 / 3+3+0 n-grams;
    # hypothesis length 14 < reference length 16 -> BP = exp(1 - 16/14)
    expected = math.exp(1 - 16 / 14) * math.exp((math.log(12 / 14) + math.log(7 / 11) + math.log(3 / 8)
                                                + math.log(1 / 6)) / 4)
    assert corpus_bleu_by_hand(HYPS, REFS) == pytest.approx(expected)
    assert T.bleu4(HYPS, REFS) == pytest.approx(expected, abs=1e-9)


def test_bleu4_is_zero_without_a_four_gram_match_and_one_for_identity() -> None:
    assert T.bleu4(["a b c d"], ["a b c e"]) == 0.0
    assert T.bleu4(["a b c d e"], ["a b c d e"]) == pytest.approx(1.0)


def test_bleu_stats_resum_to_the_corpus_score() -> None:
    s = T.bleu_stats(HYPS, REFS)
    assert s.shape == (3, 10)
    np.testing.assert_array_equal(s[0], [5, 3, 1, 0, 6, 5, 4, 3, 6, 6])  # "the cat sat on the mat" vs its ref
    assert T.bleu_from_stats(s.sum(0)) == pytest.approx(T.bleu4(HYPS, REFS), abs=1e-12)


def test_bleu_bootstrap_resamples_recompute_the_corpus_score() -> None:
    entry = T.statistics({"bleu_stats": T.bleu_stats(HYPS, REFS), "rouge_l": T.rouge_l(HYPS, REFS)})["BLEU-4"]
    idx = np.array([[0, 1, 1], [2, 2, 1], [1, 1, 1]])
    got = stats.resampled_values(entry[2], entry[0], entry[1], idx)
    want = [corpus_bleu_by_hand([HYPS[i] for i in row], [REFS[i] for i in row]) for row in idx]
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_rouge_l_is_the_lcs_f_measure_per_report() -> None:
    want = []
    for h, r in zip(HYPS, REFS, strict=True):
        hw, rw = h.split(), r.split()
        k = lcs(hw, rw)
        p, rec = k / len(hw), k / len(rw)
        want.append(2 * p * rec / (p + rec))
    # "the cat sat on the mat" / "the cat is on the mat": LCS 5 of 6 and 6 -> 5/6
    assert want[0] == pytest.approx(5 / 6)
    np.testing.assert_allclose(T.rouge_l(HYPS, REFS), want, atol=1e-6)
    assert T.text_metrics(HYPS, REFS)["ROUGE-L"] == pytest.approx(np.mean(want), abs=1e-6)


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        T.bleu4(["a", "b"], ["a"])


def test_report_intervals_of_text_predictions() -> None:
    from cxrbench.report import resample

    pred = {"kind": np.asarray("text"), "row": np.arange(3), "bleu_stats": T.bleu_stats(HYPS, REFS),
            "rouge_l": T.rouge_l(HYPS, REFS)}
    ci = resample.intervals(pred, None, resamples=50, seed=0)
    assert ci["BLEU-4"]["value"] == pytest.approx(corpus_bleu_by_hand(HYPS, REFS))
    assert ci["ROUGE-L"]["value"] == pytest.approx(float(np.mean(T.rouge_l(HYPS, REFS))))
    assert 0.0 <= ci["BLEU-4"]["low"] <= ci["BLEU-4"]["high"] <= 1.0
