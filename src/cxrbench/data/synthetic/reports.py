"""Free-text radiology reports in the MIMIC-CXR format and the CheXpert labels consistent with them.

Format (as in the real ``files/pXX/pSUBJECT/sSTUDY.txt``): a title line ``FINAL REPORT`` centred with spaces, then every
line starts with ONE space, "blank" lines are a single space, lines are at most 79 characters, upper-case section
headers end with ``:`` (EXAMINATION, INDICATION, TECHNIQUE, COMPARISON, FINDINGS, IMPRESSION), PHI is ``___``.
Some reports lack FINDINGS or IMPRESSION, a few have neither, a few carry an addendum on top separated by underscores.

Labels follow the CheXpert labeler's rule on the mentions in the written text: a label is 1.0 if some mention is
positive, else -1.0 if some mention is uncertain, else 0.0 if some mention is negative, else blank (NaN); No Finding
is 1.0 when no pathology (anything but Support Devices) is 1.0 or -1.0. A report with neither FINDINGS nor IMPRESSION
gets all-blank labels.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np

from .latent import Finding

CHEXPERT_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
    "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
)
#: CheXpert labels implied by a mention of each finding kind
KIND_TO_CHEXPERT = {
    "atelectasis": ("Atelectasis", "Lung Opacity"), "cardiomegaly": ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    "consolidation": ("Consolidation", "Lung Opacity"), "edema": ("Edema", "Lung Opacity"),
    "fracture": ("Fracture",), "mass": ("Lung Lesion",), "nodule": ("Lung Lesion",),
    "infiltration": ("Lung Opacity",), "covid19": ("Lung Opacity",), "effusion": ("Pleural Effusion",),
    "pleural_thickening": ("Pleural Other",), "pneumonia": ("Pneumonia", "Lung Opacity"),
    "pneumothorax": ("Pneumothorax",), "foreign_object": ("Support Devices",),
    "emphysema": (), "fibrosis": (), "hernia": (),
}
NOUN = {
    "atelectasis": "atelectasis", "cardiomegaly": "cardiomegaly", "effusion": "pleural effusion",
    "infiltration": "infiltrate", "mass": "mass", "nodule": "nodule", "pneumonia": "pneumonia",
    "pneumothorax": "pneumothorax", "consolidation": "consolidation", "edema": "pulmonary edema",
    "emphysema": "emphysema", "fibrosis": "interstitial fibrosis", "pleural_thickening": "pleural thickening",
    "hernia": "hiatal hernia", "covid19": "multifocal opacities", "foreign_object": "support device",
    "fracture": "rib fracture",
}
SEVERITY = {1: "mild", 2: "moderate", 3: "severe"}
SIZE = {1: "small", 2: "moderate", 3: "large"}
_SIDED = {"atelectasis", "effusion", "infiltration", "mass", "nodule", "pneumonia", "pneumothorax", "consolidation",
          "pleural_thickening", "fracture", "fibrosis"}
_SIZED = {"effusion", "pneumothorax", "mass", "nodule"}
_NO_ACUTE = "No acute cardiopulmonary process."
WIDTH = 79
TITLE = " " * 33 + "FINAL REPORT"


def phrase(f: Finding) -> str:
    """Noun phrase of a finding, e.g. "small right pleural effusion", "moderate left lower lobe consolidation"."""
    grade = (SIZE if f.kind in _SIZED else SEVERITY)[f.severity]
    if f.kind == "foreign_object":
        return "support device"
    if f.kind == "cardiomegaly":
        return f"{grade} cardiomegaly"
    if f.kind not in _SIDED:
        return f"{grade} {NOUN[f.kind]}"
    where = "bilateral" if f.side == "bilateral" else f.side
    lobe = f" {f.zone} lobe" if f.kind in ("consolidation", "pneumonia", "atelectasis", "infiltration") else ""
    return f"{grade} {where}{lobe} {NOUN[f.kind]}"


def sentence(f: Finding, rng: np.random.Generator) -> str:
    """One sentence mentioning ``f`` as positive, uncertain ("possible", "cannot exclude") or negated ("No ...")."""
    p = phrase(f)
    if f.certainty == "absent":
        return ["No {}.", "There is no {}.", "No evidence of {}."][int(rng.integers(3))].format(NOUN[f.kind])
    if f.certainty == "uncertain":
        forms = ["Possible {}.", "{} cannot be excluded.", "Findings may represent {}."]
        s = forms[int(rng.integers(3))].format(p)
        return s[0].upper() + s[1:]
    if f.kind == "foreign_object":
        return "Endotracheal tube and right internal jugular line are in standard position."
    forms = ["There is {}.", "{} is present.", "{} is noted."]
    s = forms[int(rng.integers(3))].format(p)
    return s[0].upper() + s[1:]


def chexpert_labels(mentioned: Sequence[Finding]) -> dict[str, float]:
    """CheXpert labels of the mentioned findings: 1.0 / -1.0 / 0.0 / NaN (blank), see the module docstring."""
    value = {"present": 1.0, "uncertain": -1.0, "absent": 0.0}
    rank = {1.0: 3, -1.0: 2, 0.0: 1}
    out = {k: math.nan for k in CHEXPERT_LABELS}
    for f in mentioned:
        for lab in KIND_TO_CHEXPERT[f.kind]:
            v = value[f.certainty]
            if math.isnan(out[lab]) or rank[v] > rank[out[lab]]:
                out[lab] = v
    if not any(out[k] in (1.0, -1.0) for k in CHEXPERT_LABELS if k not in ("No Finding", "Support Devices")):
        out["No Finding"] = 1.0
    return out


def _paragraph(text: str) -> list[str]:
    """Wrap ``text`` to lines of at most 79 characters, each starting with one space."""
    return textwrap.wrap(text, WIDTH, initial_indent=" ", subsequent_indent=" ", break_long_words=True)


def _section(header: str, body: str, inline: bool) -> list[str]:
    if inline:
        return _paragraph(f"{header}:  {body}") + [" "]
    return [f" {header}: ", " "] + _paragraph(body) + [" "]


def write_report(findings: Sequence[Finding], rng: np.random.Generator, *, exam: str, layout: str,
                 addendum: bool) -> tuple[str, dict[str, float]]:
    """(report text, CheXpert labels). ``layout`` in {"full", "findings", "impression", "neither"}."""
    sent = [sentence(f, rng) for f in findings]
    positive = [s for s, f in zip(sent, findings, strict=True) if f.certainty != "absent"]
    impression = " ".join(positive) or _NO_ACUTE
    if layout == "impression":
        impression = " ".join(sent) or _NO_ACUTE
    body_findings = " ".join(sent) or "The lungs are clear. The cardiomediastinal silhouette is normal."
    lines = [TITLE]
    lines += _section("EXAMINATION", exam, True)
    lines += _section("INDICATION", f"___ year old {['man', 'woman'][int(rng.integers(2))]} with dyspnea.  // ?"
                      f" {['pneumonia', 'effusion', 'infiltrate'][int(rng.integers(3))]}", True)
    lines += _section("TECHNIQUE", "Chest PA and lateral", True)
    lines += _section("COMPARISON", "___", True)
    if layout in ("full", "findings"):
        lines += _section("FINDINGS", body_findings, False)
    if layout in ("full", "impression"):
        lines += _section("IMPRESSION", impression, False)
    if layout == "neither":
        lines += _section("NOTIFICATION", "The findings were discussed with Dr. ___ on ___.", True)
    if addendum:
        lines = [" " * 32 + "FINAL ADDENDUM"] + _paragraph(
            "ADDENDUM:  Findings were communicated to Dr. ___ by telephone at ___.") + [" ", " " + "_" * 78] + lines
    labels = {k: math.nan for k in CHEXPERT_LABELS} if layout == "neither" else chexpert_labels(findings)
    return "\n".join(lines) + "\n", labels
