"""With log_format = "text" the audit line carries the same fields as in JSON: who, what, patients, status."""

from __future__ import annotations

import logging

from app.http.observability import TextFormatter


def _record(**audit: object) -> logging.LogRecord:
    record = logging.LogRecord("facade.audit", logging.INFO, __file__, 1, "access", None, None)
    record.audit = audit
    record.request_id = "r1"
    return record


def test_the_text_audit_line_names_who_what_patients_and_status():
    line = TextFormatter().format(
        _record(
            method="GET",
            route="/fhir/R4/ImagingStudy",
            status=200,
            ms=12.5,
            who="client-a",
            resources=["ImagingStudy/1.2.3"],
            patients=["Patient/p1", "Patient/p2"],
        )
    )
    assert line.endswith(
        " INFO facade.audit [r1] access method=GET route=/fhir/R4/ImagingStudy status=200 ms=12.5 who=client-a "
        'resources=["ImagingStudy/1.2.3"] patients=["Patient/p1","Patient/p2"]'
    )


def test_values_with_spaces_or_quotes_stay_one_field():
    line = TextFormatter().format(_record(who='a "b" c'))
    assert line.endswith('access who="a \\"b\\" c"')


def test_other_lines_are_plain():
    record = logging.LogRecord("app", logging.WARNING, __file__, 1, "the PACS is slow", None, None)
    record.request_id = "-"
    assert TextFormatter().format(record).endswith(" WARNING app [-] the PACS is slow")
