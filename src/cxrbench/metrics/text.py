"""Report-generation metrics: corpus BLEU-4 (sacrebleu) and ROUGE-L (torchmetrics), with per-report parts for the
bootstrap.

- BLEU-4 (Papineni et al. 2002): corpus BLEU, uniform weights 1/4 over n = 1..4, NO smoothing, brevity penalty
  exp(1 - r / c) when the hypotheses' total length c is below the references' r, as
  ``sacrebleu.metrics.BLEU(smooth_method="none").corpus_score`` (sacrebleu/metrics/bleu.py ``BLEU.corpus_score`` ->
  ``BLEU.compute_bleu``; the 13a tokenizer, case kept), in [0, 1] (sacrebleu's score / 100). Corpus BLEU is not a
  mean of per-report values: each report's sufficient statistics (clipped n-gram matches and hypothesis n-gram counts
  per order, hypothesis and reference lengths) come from ``corpus_score`` of that report alone, and a resample of the
  test reports re-sums them and applies ``BLEU.compute_bleu`` to the sums (:func:`bleu_from_stats`); on the whole
  set this is exactly sacrebleu's corpus score (sacrebleu sums the same per-sentence statistics). sacrebleu rather
  than torchmetrics' BLEUScore: the same formula, ~10x faster per report (torchmetrics indexes a tensor per n-gram).
- ROUGE-L (Lin 2004): the F-measure of the longest common subsequence of each (hypothesis, reference) pair, averaged
  over reports: ``torchmetrics.functional.text.rouge_score(rouge_keys="rougeL", use_stemmer=False)``, whose
  normalisation lower-cases and replaces every non-alphanumeric character by a space (as Google's ``rouge-score``).
  Without a stemmer it needs no nltk.

Shapes: ``preds`` and ``refs`` are sequences of N strings (one reference per report).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

N_GRAM = 4
FORMS = {
    "BLEU-4": "corpus BLEU-4 (sacrebleu, 13a tokens, uniform weights, no smoothing) in [0, 1] on the test split; "
              "texts are the tokenizer's decoded round trip on both sides",
    "ROUGE-L": "mean per-report ROUGE-L F-measure (torchmetrics rouge_score, rougeL, no stemmer) on the test split",
}


def _check(preds: Sequence[str], refs: Sequence[str]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"text metrics: {len(preds)} hypotheses for {len(refs)} references")


def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(smooth_method="none", max_ngram_order=N_GRAM)


def bleu4(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU-4 in [0, 1] of N hypotheses against one reference each (sacrebleu corpus_score)."""
    _check(preds, refs)
    return float(_bleu().corpus_score(list(preds), [list(refs)]).score) / 100.0


def bleu_stats(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """(N, 2 * 4 + 2) float64 per-report BLEU sufficient statistics: clipped matches per order n = 1..4, hypothesis
    n-grams per order, hypothesis length, reference length (sacrebleu ``corpus_score`` of each report alone)."""
    _check(preds, refs)
    metric, out = _bleu(), np.zeros((len(preds), 2 * N_GRAM + 2))
    for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
        s = metric.corpus_score([p], [[r]])
        out[i] = [*s.counts, *s.totals, s.sys_len, s.ref_len]
    return out


def bleu_from_stats(stats: np.ndarray) -> float:
    """Corpus BLEU-4 in [0, 1] of summed statistics ``stats`` (10,) (``sacrebleu BLEU.compute_bleu``, no smoothing)."""
    from sacrebleu.metrics import BLEU

    s = [int(round(v)) for v in np.asarray(stats, dtype=np.float64)]
    score = BLEU.compute_bleu(s[:N_GRAM], s[N_GRAM : 2 * N_GRAM], s[-2], s[-1], smooth_method="none",
                              max_ngram_order=N_GRAM)
    return float(score.score) / 100.0


def rouge_l(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """(N,) per-report ROUGE-L F-measure (torchmetrics rouge_score, rougeL, no stemmer); the metric is its mean."""
    from torchmetrics.functional.text import rouge_score

    _check(preds, refs)
    return np.array([float(rouge_score(p, r, rouge_keys="rougeL", use_stemmer=False)["rougeL_fmeasure"])
                     for p, r in zip(preds, refs, strict=True)], dtype=np.float64)


def text_metrics(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """{"BLEU-4", "ROUGE-L"} of N hypotheses against their references; an empty test set gives nan."""
    if not len(refs):
        return {"BLEU-4": math.nan, "ROUGE-L": math.nan}
    return {"BLEU-4": bleu4(preds, refs), "ROUGE-L": float(rouge_l(preds, refs).mean())}


# ---------------------------------------------------------------------------------------------- bootstrap forms


def _bleu_full(stats: Any, _: Any) -> float:
    return bleu_from_stats(np.asarray(stats).sum(0))


def _bleu_resampled(stats: Any, _: Any, idx: np.ndarray) -> np.ndarray:
    """(B,) corpus BLEU-4 of each resample ``idx`` (B, N): multiplicities (B, N) @ per-report stats (N, 10)."""
    from cxrbench.metrics.stats import counts

    s = np.asarray(stats, dtype=np.float64)
    return np.array([bleu_from_stats(t) for t in counts(idx, len(s)) @ s])


def statistics(pred: dict[str, np.ndarray], _: Any = None) -> dict[str, tuple[Any, Any, Any]]:
    """``cxrbench.report.resample`` entries of a report-generation run's predictions (kind "text": ``bleu_stats``
    (N, 10), ``rouge_l`` (N,)): {metric: (per-report values, targets, metric with a vectorised resample)}."""
    from cxrbench.metrics import stats

    bleu = stats._Vectorised(_bleu_full, _bleu_resampled)
    return {"BLEU-4": (pred["bleu_stats"], pred["bleu_stats"], bleu),
            "ROUGE-L": (pred["rouge_l"], pred["rouge_l"], stats.MEAN)}
