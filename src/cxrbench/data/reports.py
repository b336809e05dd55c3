"""Radiology report parsing (MIMIC-CXR free-text reports).

The standard section parser splits a report on the regex ``\\n ([A-Z ()/,-]+):\\s``: a section header is an
upper-case
name at the start of a line that begins with ONE space (the MIMIC-CXR layout), followed by a colon. A report
without
the leading-space layout therefore parses as a single untitled section (key ``""``). Section bodies are
whitespace-normalised (line breaks and runs of spaces become one space). A header occurring twice (e.g. in an
addendum) has its bodies joined in order.
"""

from __future__ import annotations

import re

SECTION_RE = re.compile(r"\n ([A-Z ()/,-]+):\s")
_WS = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


def parse_sections(text: str) -> dict[str, str]:
    """Sections of ``text`` as {HEADER: body}; text before the first header is under ``""``."""
    parts = SECTION_RE.split(text)
    sections: dict[str, str] = {"": _clean(parts[0])}
    for header, body in zip(parts[1::2], parts[2::2], strict=True):
        key = header.strip()
        body = _clean(body)
        sections[key] = f"{sections[key]} {body}".strip() if key in sections else body
    return sections


def pretraining_text(text: str) -> str | None:
    """Impression followed by findings (space-joined); ``None`` when the report has neither (the study is "
    "dropped)."""
    sections = parse_sections(text)
    parts = [sections.get("IMPRESSION", ""), sections.get("FINDINGS", "")]
    joined = " ".join(p for p in parts if p)
    return joined or None
