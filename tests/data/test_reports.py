from cxrbench.data.reports import parse_sections, pretraining_text

REPORT = (
    "                                 FINAL REPORT\n"
    " EXAMINATION:  CHEST (PA AND LAT)\n"
    " \n"
    " INDICATION:  ___F with cough\n"
    " \n"
    " FINDINGS: \n"
    " \n"
    " The lungs are clear. No pleural effusion.\n"
    " Heart size is normal.\n"
    " \n"
    " IMPRESSION: \n"
    " \n"
    " No acute cardiopulmonary process.\n"
)


def test_sections_of_standard_report():
    s = parse_sections(REPORT)
    assert s["FINDINGS"] == "The lungs are clear. No pleural effusion. Heart size is normal."
    assert s["IMPRESSION"] == "No acute cardiopulmonary process."
    assert s["EXAMINATION"] == "CHEST (PA AND LAT)"
    assert s["INDICATION"] == "___F with cough"
    assert s[""] == "FINAL REPORT"


def test_pretraining_text_is_impression_then_findings():
    assert pretraining_text(REPORT) == (
        "No acute cardiopulmonary process. The lungs are clear. No pleural effusion. Heart size is normal."
    )


def test_only_findings_or_only_impression():
    assert pretraining_text("FINAL REPORT\n FINDINGS: Clear lungs.\n") == "Clear lungs."
    assert pretraining_text("FINAL REPORT\n IMPRESSION: Nothing.\n") == "Nothing."


def test_without_leading_space_is_one_section_and_dropped():
    text = REPORT.replace("\n ", "\n")
    assert list(parse_sections(text)) == [""]
    assert pretraining_text(text) is None


def test_neither_section_gives_none():
    assert pretraining_text("FINAL REPORT\n INDICATION: cough\n COMPARISON: None.\n") is None


def test_repeated_header_joined():
    text = "X\n FINDINGS: a.\n IMPRESSION: b.\n FINDINGS: c.\n"
    assert parse_sections(text)["FINDINGS"] == "a. c."
