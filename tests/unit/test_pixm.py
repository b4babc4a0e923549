"""app.fhir.pixm: the ITI-83 request's source identifier and what the answer says."""

from __future__ import annotations

import pytest

from app.fhir import pixm


def test_the_source_identifier_escapes_what_a_token_would_split_on():
    assert pixm.source_identifier("urn:oid:1.2.3", "A|B,C\\D$") == "urn:oid:1.2.3|A\\|B\\,C\\\\D\\$"


def test_target_identifiers_are_read_and_everything_else_ignored():
    answer = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "targetIdentifier", "valueIdentifier": {"system": "urn:oid:1.2", "value": "S-200"}},
            {"name": "targetIdentifier", "valueIdentifier": {"system": "urn:oid:1.2", "value": "S-200"}},
            {"name": "targetId", "valueReference": {"reference": "Patient/9"}},
            {"name": "targetIdentifier", "valueIdentifier": {"value": "no-system"}},
            {"name": "targetIdentifier", "valueIdentifier": {"system": "urn:oid:1.3", "value": "x" * 65}},
            "garbage",
        ],
    }
    assert pixm.target_identifiers(answer) == [("urn:oid:1.2", "S-200")]
    assert pixm.target_identifiers({"resourceType": "Parameters"}) == []


@pytest.mark.parametrize("answer", [None, [], {"resourceType": "Bundle"}])
def test_an_answer_that_is_no_parameters_is_refused(answer):
    with pytest.raises(ValueError):
        pixm.target_identifiers(answer)
