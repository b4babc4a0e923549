"""app.mapping.r5: the R4 resources the facade already produces → FHIR R5, validated with fhir.resources R5.

Categories:
- ImagingStudy from the golden QIDO answers (tests/data/qido_*.json) and from hand-made rows (the shape of
  tests/api/conftest.py's study_row/instance_row): every Coding R5 turned into a CodeableConcept or
  CodeableReference, R4-only elements renamed or dropped, the rest passed through; the _summary forms;
- Patient, Endpoint, OperationOutcome, searchset Bundles (entry by entry);
- the R4 input is never mutated (it may sit in a cache);
- a property test over generated rows: the R5 form always validates and leaves its input alone;
- tests.support.fhir_check_r5 itself: it rejects R4 shapes and the usual FHIR JSON mistakes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.dicom.terminology import BODY_PARTS
from app.errors import outcome
from app.fhir import bundle, patient_ids
from app.mapping.endpoint import wado_endpoint
from app.mapping.imaging_study import MappingContext, imaging_study
from app.mapping.patient import patient
from app.mapping.r5 import bundle_r5, endpoint_r5, imaging_study_r5, patient_r5, resource_r5
from tests.api.conftest import instance_row, study_row
from tests.support.fhir_check_r5 import FhirCheckError, check_r5

DATA = Path(__file__).resolve().parent.parent / "data"
BASE = "https://fhir.example.org/fhir/R5"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
CTX = MappingContext(accession_system="http://hospital-a.example.org/acc", zone=ZoneInfo("Europe/Berlin"))


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def r5_of(r4: dict[str, Any], convert: Any) -> dict[str, Any]:
    """Convert, check the R4 input was left alone, validate the R5 output, return it."""
    before = copy.deepcopy(r4)
    out: dict[str, Any] = convert(r4)
    assert r4 == before, "the R4 input was mutated"
    check_r5(out)
    return out


@pytest.fixture
def golden_r4() -> dict[str, Any]:
    return imaging_study(load("qido_study_ct.json")[0], load("qido_instances_ct.json"), CTX)


class TestImagingStudy:
    def test_golden(self, golden_r4: dict[str, Any]) -> None:
        r5 = r5_of(golden_r4, imaging_study_r5)
        assert r5["modality"] == [{"coding": [{"system": DCM, "code": "CT"}]}]
        first = r5["series"][0]
        assert first["modality"] == {"coding": [{"system": DCM, "code": "CT"}]}
        assert first["bodySite"] == {"concept": {"coding": [{"system": SNOMED, "code": "72696002", "display": "Knee"}]}}
        assert first["laterality"] == {"coding": [{"system": SNOMED, "code": "7771000", "display": "Left"}]}
        # everything else passes through unchanged
        for key in ("id", "identifier", "status", "subject", "started", "referrer", "endpoint", "text"):
            assert r5[key] == golden_r4[key]
        assert r5["numberOfSeries"] == 4 and r5["numberOfInstances"] == 7
        for s4, s5 in zip(golden_r4["series"], r5["series"], strict=True):
            assert {k: v for k, v in s5.items() if k not in ("modality", "bodySite", "laterality")} == {
                k: v for k, v in s4.items() if k not in ("modality", "bodySite", "laterality")
            }
            assert s5["instance"] == s4["instance"]  # R5 instance: uid, sopClass Coding, number, title as in R4

    def test_keys_follow_input_order(self, golden_r4: dict[str, Any]) -> None:
        assert list(imaging_study_r5(golden_r4)) == list(golden_r4)

    def test_output_shares_no_changed_part_with_input(self, golden_r4: dict[str, Any]) -> None:
        r5 = imaging_study_r5(golden_r4)
        assert r5 is not golden_r4
        assert r5["series"] is not golden_r4["series"]
        assert r5["series"][0] is not golden_r4["series"][0]
        r5["series"][0]["modality"]["coding"].append({"code": "MR"})
        assert golden_r4["series"][0]["modality"] == {"system": DCM, "code": "CT"}

    def test_summary_forms(self) -> None:
        row = study_row("1.2.3", offset="+0200")
        series_row = instance_row("1.2.3", "1.2.3.1", "1.2.3.1.1", laterality="R")
        summary = r5_of(imaging_study(row, None, CTX, series_rows=[series_row]), imaging_study_r5)
        assert summary["meta"] == {
            "tag": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}]
        }
        assert "text" not in summary
        assert summary["series"][0]["laterality"]["coding"][0]["code"] == "24028007"
        bare = r5_of(imaging_study(row, None, CTX), imaging_study_r5)
        assert "series" not in bare

    def test_body_part_without_annex_l_code_becomes_text(self) -> None:
        rows = [instance_row("1.2.3", "1.2.3.1", "1.2.3.1.1", body_part="SPLEENISH")]
        r4 = imaging_study(study_row("1.2.3"), rows, CTX)
        assert r4["series"][0]["bodySite"] == {"display": "SPLEENISH"}
        r5 = r5_of(r4, imaging_study_r5)
        assert r5["series"][0]["bodySite"] == {"concept": {"text": "SPLEENISH"}}

    def test_several_series_and_modalities(self) -> None:
        uid = "2.25.1"
        rows = [
            instance_row(uid, f"{uid}.1", f"{uid}.1.1", modality="MR", body_part="KNEE", laterality="B"),
            instance_row(uid, f"{uid}.1", f"{uid}.1.2", modality="MR", number=2, body_part="KNEE", laterality="B"),
            instance_row(uid, f"{uid}.9", f"{uid}.9.1", modality="KO", series_number=9, body_part=None),
        ]
        r4 = imaging_study(study_row(uid, modalities=("MR", "KO"), issuer="HOSP-Ä", name="Ñúñez^José"), rows, CTX)
        r5 = r5_of(r4, imaging_study_r5)
        assert r5["modality"] == [{"coding": [{"system": DCM, "code": "MR"}]}]
        assert [s["modality"]["coding"][0]["code"] for s in r5["series"]] == ["MR", "KO"]
        assert "bodySite" not in r5["series"][1]
        assert r5["subject"]["reference"] == "Patient/" + patient_ids.encode("MRN1", "HOSP-Ä")

    def test_r4_only_elements_are_renamed_or_dropped(self, golden_r4: dict[str, Any]) -> None:
        procedure = {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}]}
        reason = {"text": "Suspected fracture"}
        r4 = golden_r4 | {
            "procedureReference": {"reference": "Procedure/p1"},
            "procedureCode": [procedure],
            "reasonCode": [reason],
            "reasonReference": [{"reference": "Condition/c1"}],
            "interpreter": [{"display": "Dr. Reader"}],
        }
        r5 = r5_of(r4, imaging_study_r5)
        assert r5["partOf"] == [{"reference": "Procedure/p1"}]
        assert r5["procedure"] == [{"concept": procedure}]
        assert r5["reason"] == [{"concept": reason}, {"reference": {"reference": "Condition/c1"}}]
        for gone in ("procedureReference", "procedureCode", "reasonCode", "reasonReference", "interpreter"):
            assert gone not in r5

    def test_elements_subset(self, golden_r4: dict[str, Any]) -> None:
        """_elements keeps a few top-level elements (plus status, subject) and tags the resource SUBSETTED."""
        r4 = {k: golden_r4[k] for k in ("resourceType", "id", "status", "subject", "modality")}
        r4["meta"] = {
            "tag": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}]
        }
        r5 = r5_of(r4, imaging_study_r5)
        assert set(r5) == set(r4)


class TestPatient:
    @pytest.mark.parametrize(
        "name",
        [
            {"Alphabetic": "Müller^Jürgen^^Dr."},
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
            {"Ideographic": "王^小明"},
        ],
    )
    def test_same_in_r5(self, name: dict[str, str]) -> None:
        row = study_row("1.2.3", issuer="HOSP-A")
        row["00100010"] = {"vr": "PN", "Value": [name]}
        row["00100040"] = {"vr": "CS", "Value": ["F"]}
        row["00100030"] = {"vr": "DA", "Value": ["19580301"]}
        r4 = patient(row, CTX)
        r5 = r5_of(r4, patient_r5)
        assert r5 == r4
        assert r5 is not r4


class TestEndpoint:
    def test_wado_rs(self) -> None:
        r4 = wado_endpoint("wado-rs", "http://pacs.example.org/dicom-web/")
        r5 = r5_of(r4, endpoint_r5)
        assert r5 == {
            "resourceType": "Endpoint",
            "id": "wado-rs",
            "extension": r4["extension"],  # requires-access-token, unchanged
            "status": "active",
            "connectionType": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                            "code": "dicom-wado-rs",
                        }
                    ]
                }
            ],
            "name": "PACS WADO-RS",
            "payload": [
                {
                    "type": [
                        {
                            "coding": [
                                {"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type", "code": "any"}
                            ],
                            "text": "DICOM WADO-RS",
                        }
                    ],
                    "mimeType": ["application/dicom"],
                }
            ],
            "address": "http://pacs.example.org/dicom-web",
        }

    def test_r4_test_status_becomes_environment(self) -> None:
        r4 = wado_endpoint("wado-rs", "http://pacs.example.org/dicom-web") | {"status": "test"}
        r5 = r5_of(r4, endpoint_r5)
        assert r5["status"] == "active"
        assert r5["environmentType"] == [
            {"coding": [{"system": "http://hl7.org/fhir/endpoint-environment", "code": "test"}]}
        ]

    @pytest.mark.parametrize("status", ["active", "suspended", "error", "off", "entered-in-error"])
    def test_other_statuses_unchanged(self, status: str) -> None:
        r4 = wado_endpoint("wado-rs", "http://pacs.example.org/dicom-web") | {"status": status}
        assert r5_of(r4, endpoint_r5)["status"] == status

    def test_payload_type_without_mime_type(self) -> None:
        r4 = wado_endpoint("e1", "http://pacs.example.org/dicom-web")
        del r4["payloadMimeType"]
        assert r5_of(r4, endpoint_r5)["payload"] == [{"type": r4["payloadType"]}]


class TestBundleAndDispatch:
    def test_searchset_with_includes(self, golden_r4: dict[str, Any]) -> None:
        row = load("qido_study_ct.json")[0]
        endpoint = wado_endpoint("wado-rs", "http://pacs.example.org/dicom-web")
        r4 = bundle.searchset(
            BASE,
            [golden_r4],
            self_url=f"{BASE}/ImagingStudy?_include=ImagingStudy:endpoint",
            next_url=f"{BASE}/ImagingStudy?_include=ImagingStudy:endpoint&_offset=1",
            previous_url=f"{BASE}/ImagingStudy?_include=ImagingStudy:endpoint&_offset=0",
            included=[endpoint, patient(row, CTX)],
            total=3,
        )
        r5 = r5_of(r4, bundle_r5)
        assert [e["resource"]["resourceType"] for e in r5["entry"]] == ["ImagingStudy", "Endpoint", "Patient"]
        assert r5["entry"][0]["resource"] == imaging_study_r5(golden_r4)
        assert r5["entry"][1]["resource"] == endpoint_r5(endpoint)
        assert [e["search"] for e in r5["entry"]] == [{"mode": "match"}, {"mode": "include"}, {"mode": "include"}]
        assert r5["link"] == r4["link"] and r5["total"] == 3
        assert resource_r5(r4) == r5

    def test_empty_searchset(self) -> None:
        r4 = bundle.searchset(BASE, [], self_url=f"{BASE}/ImagingStudy?modality=XX")
        assert r5_of(r4, bundle_r5) == r4

    def test_operation_outcome_unchanged(self) -> None:
        r4 = outcome("not-found", "No such study")
        assert r5_of(r4, resource_r5) == r4

    def test_unknown_type_is_refused(self) -> None:
        with pytest.raises(ValueError, match="CapabilityStatement"):
            resource_r5({"resourceType": "CapabilityStatement"})


# -- property: generated rows ----------------------------------------------------------------------------------

_words = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ éü^", min_size=1, max_size=12)


@st.composite
def r4_studies(draw: st.DrawFn) -> dict[str, Any]:
    uid = "2.25." + str(draw(st.integers(min_value=1, max_value=10**30)))
    modality = st.sampled_from(["CT", "MR", "US", "KO", "SR", "OT"])
    rows = []
    for s in range(1, draw(st.integers(min_value=1, max_value=3)) + 1):
        body_part = draw(st.one_of(st.none(), st.sampled_from(sorted(BODY_PARTS)), _words))
        laterality = draw(st.sampled_from([None, "L", "R", "B", "X"]))
        series_modality = draw(modality)
        for i in range(1, draw(st.integers(min_value=1, max_value=3)) + 1):
            rows.append(
                instance_row(
                    uid,
                    f"{uid}.{s}",
                    f"{uid}.{s}.{i}",
                    modality=series_modality,
                    number=i,
                    series_number=s,
                    body_part=body_part,
                    laterality=laterality,
                )
            )
    row = study_row(
        uid,
        name=draw(_words),
        offset=draw(st.sampled_from([None, "+0000", "-0500", "+0530"])),
        time=draw(st.sampled_from([None, "10", "1015", "101500", "101500.123"])),
        modalities=tuple(draw(st.lists(modality, min_size=1, max_size=3, unique=True))),
    )
    zone = draw(st.sampled_from([None, ZoneInfo("UTC"), ZoneInfo("America/New_York")]))
    ctx = MappingContext(zone=zone)
    if draw(st.booleans()):
        return imaging_study(row, None, ctx, series_rows=rows)
    return imaging_study(row, rows, ctx)


@settings(max_examples=60, deadline=None)
@given(r4_studies())
def test_property_r5_imaging_study_validates_and_leaves_input_alone(r4: dict[str, Any]) -> None:
    r5 = r5_of(r4, imaging_study_r5)
    assert len(r5.get("series", [])) == len(r4.get("series", []))


# -- the validator itself ------------------------------------------------------------------------------------------


class TestCheckR5:
    def test_r4_imaging_study_is_not_r5(self, golden_r4: dict[str, Any]) -> None:
        with pytest.raises(FhirCheckError):
            check_r5(golden_r4)

    def test_r4_endpoint_is_not_r5(self) -> None:
        with pytest.raises(FhirCheckError):
            check_r5(wado_endpoint("wado-rs", "http://pacs.example.org/dicom-web"))

    def test_endpoint_test_status_is_r4_only(self) -> None:
        r5 = endpoint_r5(wado_endpoint("wado-rs", "http://pacs.example.org/dicom-web")) | {"status": "test"}
        with pytest.raises(FhirCheckError, match=r"Endpoint\.status"):
            check_r5(r5)

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"status": "final"}, "ImagingStudy.status"),
            ({"description": ""}, "empty value"),
            ({"note": []}, "empty value"),
            ({"referrer": {}}, "empty value"),
            ({"started": "2020-01-15T10:15:00"}, "needs a zone"),
            ({"id": "x" * 65}, "not a FHIR id"),
            ({"text": {"status": "generated", "div": "<div>unclosed"}}, "XHTML"),
            ({"text": {"status": "generated", "div": "<p>no namespace</p>"}}, "XHTML"),
            ({"text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"> </div>'}}, "no text"),
            ({"interpreter": [{"display": "Dr. Reader"}]}, "interpreter|R5 validation"),
        ],
    )
    def test_imaging_study_mistakes(self, golden_r4: dict[str, Any], change: dict[str, Any], message: str) -> None:
        with pytest.raises(FhirCheckError, match=message):
            check_r5(imaging_study_r5(golden_r4) | change)

    def test_bundle_errors_name_the_entry(self, golden_r4: dict[str, Any]) -> None:
        r4 = bundle.searchset(BASE, [golden_r4], self_url=f"{BASE}/ImagingStudy")
        bad = bundle_r5(r4)
        bad["entry"][0] = bad["entry"][0] | {"resource": bad["entry"][0]["resource"] | {"status": "final"}}
        with pytest.raises(FhirCheckError, match=r"entry\[0\]|R5 validation"):
            check_r5(bad)

    def test_bundle_link_relation_is_a_code(self, golden_r4: dict[str, Any]) -> None:
        r5 = bundle_r5(bundle.searchset(BASE, [golden_r4], self_url=f"{BASE}/ImagingStudy"))
        r5["link"] = [{"relation": "myself", "url": f"{BASE}/ImagingStudy"}]
        with pytest.raises(FhirCheckError, match=r"link\.relation"):
            check_r5(r5)

    def test_imaging_selection_issued_needs_seconds_and_zone(self) -> None:
        selection = {
            "resourceType": "ImagingSelection",
            "status": "available",
            "code": {"text": "Key images"},
            "issued": "2024-03-01T09:30:00+01:00",
        }
        check_r5(selection)
        for issued in ("2024-03-01T09:30+01:00", "2024-03-01T09:30:00", "2024-03-01"):
            with pytest.raises(FhirCheckError):
                check_r5(selection | {"issued": issued})
        with pytest.raises(FhirCheckError, match=r"ImagingSelection\.status"):
            check_r5(selection | {"status": "registered"})
        with pytest.raises(FhirCheckError, match="studyUid/seriesUid"):
            check_r5(selection | {"instance": [{"uid": "1.2.3"}]})
