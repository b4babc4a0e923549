"""Which identifier of an EHR Patient is the MRN, and which PACS issuer it belongs to (app.pacs.ehr.MrnRule)."""

from __future__ import annotations

import dataclasses

import pytest

from app.fhir.search import EhrPatient, PatientKey, parse_search
from app.pacs.ehr import MrnRule
from tests.support.ehr import MR
from tests.unit.helpers import SEARCH_CTX

DEFAULT = "urn:x-imaging-facade:patient-id"


def rule(system: str | None = None) -> MrnRule:
    return MrnRule(system, DEFAULT, "urn:x-imaging-facade:issuer:", {"HOSP-A": "http://a.example/mrn"})


def patient(*identifiers):
    return {"resourceType": "Patient", "id": "1", "identifier": list(identifiers)}


@pytest.mark.parametrize(
    ("ident", "key"),
    [
        ({"type": MR, "system": DEFAULT, "value": "M1"}, PatientKey("M1", None)),
        ({"type": MR, "system": "http://a.example/mrn", "value": "M1"}, PatientKey("M1", "HOSP-A")),
        ({"type": MR, "system": "urn:oid:1.2.3", "value": "M1"}, PatientKey("M1", "1.2.3")),
        ({"type": MR, "system": "http://unknown.example", "value": "M1"}, PatientKey("M1", None, any_issuer=True)),
        ({"type": MR, "value": "M1"}, PatientKey("M1", None, any_issuer=True)),
    ],
)
def test_mr_typed_identifier_and_its_issuer(ident, key):
    assert rule().keys(patient({"system": "x", "value": "N1"}, ident)) == [key]


def test_configured_system_wins_over_type():
    p = patient({"system": "http://a.example/mrn", "value": "A1"}, {"type": MR, "system": DEFAULT, "value": "M1"})
    assert rule("http://a.example/mrn").keys(p) == [PatientKey("A1", "HOSP-A")]


@pytest.mark.parametrize(
    "resource",
    [
        None,
        [],
        {"resourceType": "Bundle"},
        patient(),
        {"resourceType": "Patient", "identifier": "x"},
        patient({"type": MR, "value": ""}),
        patient({"type": MR, "value": 7}),
        patient({"type": {"coding": "MR"}}),
        patient({"type": MR, "value": "x" * 65}),
    ],
)
def test_odd_resources_give_no_key(resource):
    assert rule().keys(resource) == []


def test_parse_turns_foreign_ids_into_ehr_refs_only_when_linked():
    linked = dataclasses.replace(SEARCH_CTX, ehr_base="http://ehr.example/fhir")
    values = parse_search([("patient", "Patient/123,http://ehr.example/fhir/Patient/7,bad id")], linked).criteria
    assert values[0].values == (EhrPatient("123"), EhrPatient("7"))
    assert parse_search([("patient", "Patient/123")], SEARCH_CTX).criteria[0].values == ()
