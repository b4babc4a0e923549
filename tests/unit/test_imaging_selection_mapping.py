"""app.mapping.imaging_selection: a KOS → R5 ImagingSelection resources, one per (study, series) group.

Categories:
- KOS documents built by highdicom (tests/support/kos.py), serialised as a server sends them and parsed by
  app.dicom.kos.parse_kos: whole resources for one document, several purposes, frames, two studies, rejection notes;
- issued: TimezoneOffsetFromUTC, else the PACS zone (DST, historical offsets), else left out;
- odd names and text (escaping, ideographic groups), unknown coding schemes, missing parts (hand-made
  KeyObjectSelection values);
- every resource (and a searchset of them) passes tests.support.fhir_check_r5.check_r5.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from app.dicom.kos import Code, KeyObjectSelection, PersonName, ReferencedInstance, parse_kos
from app.fhir import bundle, patient_ids, selection_ids
from app.mapping.imaging_selection import KEY_OBJECT_DESCRIPTION_URL, imaging_selections, issued_instant
from app.mapping.imaging_study import MappingContext
from tests.support.fhir_check_r5 import check_r5
from tests.support.kos import (
    FOR_TEACHING,
    MULTIFRAME_SC_SOP_CLASS_UID,
    PURPOSES,
    REJECTIONS,
    Title,
    kos_json,
    make_kos,
    make_multiframe,
    make_study,
)

DCM = "http://dicom.nema.org/resources/ontology/DCM"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
XHTML = "{http://www.w3.org/1999/xhtml}"
SEED = 23
PATIENT: dict[str, Any] = {"patient_id": "KOS0001", "patient_name": "Müller^Jürgen^^Dr.", "issuer": "HOSP-K"}
CTX = MappingContext(zone=ZoneInfo("Europe/Berlin"))


def selections(kos: Any, ctx: MappingContext = CTX) -> list[dict[str, Any]]:
    """KOS dataset → DICOM JSON → KeyObjectSelection → ImagingSelections, each one validated."""
    out = imaging_selections(parse_kos(kos_json(kos)), ctx)
    for resource in out:
        check_r5(resource)
    return out


def narrative_text(resource: dict[str, Any]) -> str:
    root = ET.fromstring(resource["text"]["div"])
    assert root.tag == XHTML + "div"
    return "".join(root.itertext())


@pytest.fixture(scope="module")
def study() -> list[Any]:
    return make_study(SEED, "sel", **PATIENT, series_sizes=(2, 1))


def hand_made(**changes: Any) -> KeyObjectSelection:
    """A KeyObjectSelection without DICOM: for the cases highdicom will not build (device observer, no title,
    private schemes, a missing SOP class)."""
    base = KeyObjectSelection(
        sop_instance_uid="2.25.77",
        study_uid="2.25.1",
        series_uid="2.25.1.99",
        patient_id="P9",
        issuer_of_patient_id=None,
        patient_name=PersonName("Doe^Jane"),
        title=Code("113000", "DCM", "Of Interest"),
        description=None,
        observer_name=None,
        device_observer_name=None,
        content_date="20240301",
        content_time="093000",
        timezone_offset="+0100",
        references=(ReferencedInstance("2.25.1", "2.25.1.1", "2.25.1.1.1", CT_CLASS),),
    )
    return dataclasses.replace(base, **changes)


class TestOneDocument:
    def test_two_series_whole(self, study: list[Any]) -> None:
        kos = make_kos(
            [study[0], study[1], study[2]],
            title=FOR_TEACHING,
            description="Nice case: fracture <left> & callus",
            observer_name="Smith^John^^Dr.",
            timezone_offset="+0530",
            seed=SEED,
        )
        first, second = selections(kos)
        kos_uid = str(kos.SOPInstanceUID)
        study_uid = str(study[0].StudyInstanceUID)
        assert first == {
            "resourceType": "ImagingSelection",
            "id": selection_ids.encode(kos_uid, 0),
            "text": first["text"],
            "extension": [{"url": KEY_OBJECT_DESCRIPTION_URL, "valueString": "Nice case: fracture <left> & callus"}],
            "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:" + kos_uid}],
            "status": "available",
            "subject": {
                "reference": "Patient/" + patient_ids.encode("KOS0001", "HOSP-K"),
                "identifier": {"system": "urn:x-imaging-facade:issuer:HOSP-K", "value": "KOS0001"},
                "display": "Dr. Jürgen Müller",
            },
            "issued": "2024-03-01T09:30:00+05:30",
            "performer": [{"actor": {"display": "Dr. John Smith"}}],
            "code": {"coding": [{"system": DCM, "code": "113004", "display": "For Teaching"}]},
            "studyUid": study_uid,
            "derivedFrom": [{"reference": f"ImagingStudy/{study_uid}"}],
            "endpoint": [{"reference": "Endpoint/wado-rs"}],
            "seriesUid": str(study[0].SeriesInstanceUID),
            "instance": [
                {
                    "uid": str(ds.SOPInstanceUID),
                    "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:" + CT_CLASS},
                }
                for ds in study[:2]
            ],
        }
        assert second["id"] == selection_ids.encode(kos_uid, 1)
        assert second["seriesUid"] == str(study[2].SeriesInstanceUID)
        assert [i["uid"] for i in second["instance"]] == [str(study[2].SOPInstanceUID)]
        # everything but the group itself is shared
        group_keys = {"id", "text", "seriesUid", "instance"}
        assert {k: v for k, v in first.items() if k not in group_keys} == {
            k: v for k, v in second.items() if k not in group_keys
        }
        assert first["text"]["status"] == "generated"
        text = narrative_text(first)
        assert "Nice case: fracture <left> & callus" in text  # escaped in the div, intact once parsed
        assert "&lt;left&gt; &amp; callus" in first["text"]["div"]
        assert "For Teaching" in text and "Dr. Jürgen Müller (KOS0001)" in text and "Dr. John Smith" in text
        assert "2 instances" in text and "1 instance of" in narrative_text(second)

    def test_ids_decode_to_the_document_and_group(self, study: list[Any]) -> None:
        kos = make_kos(study, title=FOR_TEACHING, seed=SEED)
        for k, resource in enumerate(selections(kos)):
            assert selection_ids.decode(resource["id"]) == (str(kos.SOPInstanceUID), k)

    def test_resources_share_no_mutable_parts(self, study: list[Any]) -> None:
        first, second = selections(make_kos(study, title=FOR_TEACHING, observer_name="Lee^Ann", seed=SEED))
        first["subject"]["display"] = "changed"
        first["identifier"][0]["value"] = "changed"
        first["code"]["coding"][0]["display"] = "changed"
        first["performer"][0]["actor"]["display"] = "changed"
        assert second["subject"]["display"] == "Dr. Jürgen Müller"
        assert second["identifier"][0]["value"].startswith("urn:oid:")
        assert second["code"]["coding"][0]["display"] == "For Teaching"
        assert second["performer"][0]["actor"]["display"] == "Ann Lee"

    def test_searchset_of_selections(self, study: list[Any]) -> None:
        found = selections(make_kos(study, title=FOR_TEACHING, seed=SEED))
        base = "https://fhir.example.org/fhir/R5"
        check_r5(bundle.searchset(base, found, self_url=f"{base}/ImagingSelection?patient=Patient/x"))

    def test_no_description_no_extension(self, study: list[Any]) -> None:
        (resource, _) = selections(make_kos(study, title=FOR_TEACHING, seed=SEED))
        assert "extension" not in resource
        assert "performer" not in resource


class TestPurposes:
    @pytest.mark.parametrize("title", PURPOSES, ids=[t[2] for t in PURPOSES])
    def test_title_is_the_code(self, study: list[Any], title: Title) -> None:
        kos = make_kos([study[0]], title=title, seed=SEED)
        (resource,) = selections(kos)
        assert resource["code"] == {"coding": [{"system": DCM, "code": title[0], "display": title[2]}]}
        assert title[2] in narrative_text(resource)

    @pytest.mark.parametrize("title", REJECTIONS, ids=[t[2] for t in REJECTIONS])
    def test_rejection_notes_give_nothing(self, study: list[Any], title: Title) -> None:
        kos = make_kos(study, title=title, description="withdrawn", seed=SEED)
        assert parse_kos(kos_json(kos)).is_rejection
        assert selections(kos) == []

    def test_distinct_documents_same_instances(self, study: list[Any]) -> None:
        """Two KOS over the same images (teaching, conference) are two sets of resources with their own ids."""
        a = selections(make_kos([study[0]], title=PURPOSES[0], seed=SEED))
        b = selections(make_kos([study[0]], title=PURPOSES[1], seed=SEED))
        assert a[0]["id"] != b[0]["id"] and a[0]["identifier"] != b[0]["identifier"]
        assert a[0]["instance"] == b[0]["instance"]


class TestFramesAndStudies:
    def test_frames_are_the_subset(self, study: list[Any]) -> None:
        cine = make_multiframe(study[0], frames=6, seed=SEED)
        kos = make_kos([study[0], cine], title=FOR_TEACHING, frames={cine.SOPInstanceUID: [2, 4]}, seed=SEED)
        resources = selections(kos)
        assert len(resources) == 2  # the CT series, then the multi-frame image's own series
        whole, framed = resources
        assert "subset" not in whole["instance"][0]
        assert framed["instance"] == [
            {
                "uid": str(cine.SOPInstanceUID),
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:" + MULTIFRAME_SC_SOP_CLASS_UID},
                "subset": ["2", "4"],
            }
        ]
        assert "(2 frames selected)" in narrative_text(framed)

    def test_two_studies_share_the_identifier(self, study: list[Any]) -> None:
        other = make_study(SEED, "prior", **PATIENT, series_sizes=(1,), study_date="20230105")
        kos = make_kos([study[0], other[0]], title=FOR_TEACHING, description="Compare with prior", seed=SEED)
        current, prior = selections(kos)
        assert current["identifier"] == prior["identifier"]
        assert current["studyUid"] == str(study[0].StudyInstanceUID)
        assert prior["studyUid"] == str(other[0].StudyInstanceUID)
        assert prior["derivedFrom"] == [{"reference": f"ImagingStudy/{other[0].StudyInstanceUID}"}]
        assert prior["seriesUid"] == str(other[0].SeriesInstanceUID)
        assert {current["id"], prior["id"]} == {
            selection_ids.encode(str(kos.SOPInstanceUID), 0),
            selection_ids.encode(str(kos.SOPInstanceUID), 1),
        }
        assert current["extension"] == prior["extension"]

    def test_no_resolvable_reference_gives_nothing(self) -> None:
        assert imaging_selections(hand_made(references=(), unresolved=("2.25.5",)), CTX) == []

    def test_missing_sop_class_is_left_out(self) -> None:
        kos = hand_made(references=(ReferencedInstance("2.25.1", "2.25.1.1", "2.25.1.1.1", None, (3,)),))
        (resource,) = imaging_selections(kos, CTX)
        check_r5(resource)
        assert resource["instance"] == [{"uid": "2.25.1.1.1", "subset": ["3"]}]


class TestIssued:
    def test_offset_of_the_kos(self, study: list[Any]) -> None:
        (resource, _) = selections(make_kos(study, title=FOR_TEACHING, timezone_offset="-0330", seed=SEED))
        assert resource["issued"] == "2024-03-01T09:30:00-03:30"

    def test_offset_wins_over_pacs_zone(self, study: list[Any]) -> None:
        kos = make_kos(study, title=FOR_TEACHING, timezone_offset="+0000", seed=SEED)
        (resource, _) = selections(kos, MappingContext(zone=ZoneInfo("Asia/Tokyo")))
        assert resource["issued"] == "2024-03-01T09:30:00+00:00"

    @pytest.mark.parametrize(
        ("date", "zone", "issued"),
        [
            ("20240301", "Europe/Berlin", "2024-03-01T09:30:00+01:00"),
            ("20240701", "Europe/Berlin", "2024-07-01T09:30:00+02:00"),  # DST
            ("20240701", "America/New_York", "2024-07-01T09:30:00-04:00"),
            ("20240701", "UTC", "2024-07-01T09:30:00+00:00"),
        ],
    )
    def test_no_offset_uses_the_pacs_zone(self, study: list[Any], date: str, zone: str, issued: str) -> None:
        kos = make_kos(study, title=FOR_TEACHING, content_date=date, seed=SEED)
        (resource, _) = selections(kos, MappingContext(zone=ZoneInfo(zone)))
        assert resource["issued"] == issued

    def test_no_offset_no_zone_no_issued(self, study: list[Any]) -> None:
        (resource, _) = selections(make_kos(study, title=FOR_TEACHING, seed=SEED), MappingContext())
        assert "issued" not in resource
        assert "·" not in narrative_text(resource)  # no date in the title line either

    def test_fractional_seconds(self) -> None:
        assert issued_instant(hand_made(content_time="093000.25"), None) == "2024-03-01T09:30:00.250000+01:00"

    def test_minutes_only_time_gets_seconds(self) -> None:
        assert issued_instant(hand_made(content_time="0930"), None) == "2024-03-01T09:30:00+01:00"

    def test_impossible_offset_is_ignored(self) -> None:
        kos = hand_made(timezone_offset="+1500")
        assert issued_instant(kos, None) is None
        assert issued_instant(kos, ZoneInfo("UTC")) == "2024-03-01T09:30:00+00:00"

    def test_historical_offset_with_seconds_is_written_in_utc(self) -> None:
        # Amsterdam kept local mean time (+00:19:32 in winter) until 1937; an instant has no seconds in its offset.
        kos = hand_made(content_date="19300115", timezone_offset=None)
        assert issued_instant(kos, ZoneInfo("Europe/Amsterdam")) == "1930-01-15T09:10:28+00:00"

    @pytest.mark.parametrize(("date", "time"), [(None, "093000"), ("20240301", None), ("2024031", "093000")])
    def test_no_usable_content_date_time(self, date: str | None, time: str | None) -> None:
        (resource,) = imaging_selections(hand_made(content_date=date, content_time=time), CTX)
        check_r5(resource)
        assert "issued" not in resource


class TestNamesAndCodes:
    @pytest.mark.parametrize(
        ("name", "display"),
        [
            ("O'Brien^Siobhán", "Siobhán O'Brien"),
            ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Tarou Yamada"),
            ("=王^小明", "小明 王"),
            ("<b>Evil</b>^&amp;", "&amp; <b>Evil</b>"),
        ],
    )
    def test_odd_patient_names(self, name: str, display: str) -> None:
        key = "odd" + str(sum(map(ord, name)))  # short: it becomes part of a 16-character accession number
        images = make_study(SEED, key, patient_id="ODD1", patient_name=name, series_sizes=(1,))
        (resource,) = selections(make_kos(images, title=FOR_TEACHING, description="x < y", seed=SEED))
        assert resource["subject"]["display"] == display
        assert f"Patient: {display} (ODD1)" in narrative_text(resource)
        assert resource["subject"]["reference"] == "Patient/" + patient_ids.encode("ODD1", None)
        assert resource["subject"]["identifier"] == {"system": "urn:x-imaging-facade:patient-id", "value": "ODD1"}

    def test_ideographic_observer(self, study: list[Any]) -> None:
        (resource, _) = selections(make_kos(study, title=FOR_TEACHING, observer_name="=佐藤^花子", seed=SEED))
        assert resource["performer"] == [{"actor": {"display": "花子 佐藤"}}]

    def test_device_observer(self) -> None:
        (resource,) = imaging_selections(
            hand_made(observer_name=PersonName("Kim^Min"), device_observer_name="CAD <v2>"), CTX
        )
        check_r5(resource)
        assert resource["performer"] == [
            {"actor": {"display": "Min Kim"}},
            {"actor": {"type": "Device", "display": "CAD <v2>"}},
        ]
        assert "Min Kim, CAD &lt;v2&gt;" in resource["text"]["div"]

    @pytest.mark.parametrize(
        ("login", "reference"),
        [
            ("Practitioner/7", "Practitioner/7"),
            ("https://ehr.example.org/fhir/PractitionerRole/r-1", "https://ehr.example.org/fhir/PractitionerRole/r-1"),
            ("Person/9", None),  # SMART allows it, performer.actor does not: the name only
            ("jroe", None),  # a PACS login, not a FHIR reference
        ],
    )
    def test_person_observer_referenced_by_its_fhir_user(self, login: str, reference: str | None) -> None:
        (resource,) = imaging_selections(hand_made(observer_name=PersonName("Roe^Jane"), observer_login=login), CTX)
        check_r5(resource)
        want: dict[str, Any] = {"reference": reference} if reference else {}
        assert resource["performer"] == [{"actor": want | {"display": "Jane Roe"}}]

    def test_device_observer_identified_by_its_uid(self) -> None:
        kos = hand_made(device_observer_uid="2.25.4242", device_observer_name="Imaging FHIR facade")
        (resource,) = imaging_selections(kos, CTX)
        check_r5(resource)
        device = {"system": "urn:dicom:uid", "value": "urn:oid:2.25.4242"}
        assert resource["performer"] == [
            {"actor": {"type": "Device", "identifier": device, "display": "Imaging FHIR facade"}}
        ]
        (nameless,) = imaging_selections(hand_made(device_observer_uid="2.25.4242"), CTX)
        assert nameless["performer"] == [
            {"actor": {"type": "Device", "identifier": device, "display": "Device 2.25.4242"}}
        ]

    @pytest.mark.parametrize(
        ("title", "code"),
        [
            (Code("113000", "DCM", None), {"coding": [{"system": DCM, "code": "113000"}]}),
            (
                Code("373873005", "SCT", "Pharmaceutical"),
                {"coding": [{"system": "http://snomed.info/sct", "code": "373873005", "display": "Pharmaceutical"}]},
            ),
            (
                Code("18748-4", "LN", "Diagnostic imaging study"),
                {"coding": [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}]},
            ),
            (Code("KEY1", "99HOSP", "Tumour board"), {"text": "Tumour board"}),
            (Code("T-D1100", "SRT", None), {"text": "T-D1100"}),  # SNOMED RT ids are not SNOMED CT concepts
            (Code("urn:x:purpose", None, "URN coded"), {"text": "URN coded"}),
            (None, {"text": "Key Object Selection"}),
        ],
    )
    def test_title_schemes(self, title: Code | None, code: dict[str, Any]) -> None:
        (resource,) = imaging_selections(hand_made(title=title), CTX)
        check_r5(resource)
        assert resource["code"] == code

    def test_no_patient_id(self) -> None:
        (resource,) = imaging_selections(hand_made(patient_id=None, patient_name=None), CTX)
        check_r5(resource)
        assert resource["subject"] == {"reference": "Patient/" + patient_ids.encode("", None)}
        assert "Patient:" not in narrative_text(resource)

    def test_issuer_from_table(self) -> None:
        ctx = MappingContext(issuer_systems={"HOSP-A": "http://hospital-a.example.org/mrn"})
        (resource,) = imaging_selections(hand_made(issuer_of_patient_id="HOSP-A"), ctx)
        assert resource["subject"]["identifier"] == {"system": "http://hospital-a.example.org/mrn", "value": "P9"}
        assert resource["subject"]["reference"] == "Patient/" + patient_ids.encode("P9", "HOSP-A")

    def test_endpoint_id_from_context(self) -> None:
        (resource,) = imaging_selections(hand_made(), MappingContext(endpoint_id="pacs-1"))
        assert resource["endpoint"] == [{"reference": "Endpoint/pacs-1"}]

    def test_control_characters_in_the_description(self) -> None:
        """UT text may carry FF or an ISO 2022 ESC; neither fits a FHIR string nor XHTML."""
        (resource,) = imaging_selections(hand_made(description="line 1\x0cpage 2\x1b$B\tend\r\nok"), CTX)
        check_r5(resource)
        assert resource["extension"][0]["valueString"] == "line 1 page 2 $B\tend\r\nok"
        assert "page 2 $B" in narrative_text(resource)
        (blank,) = imaging_selections(hand_made(description="\x0c\x1b"), CTX)
        assert "extension" not in blank

    def test_kos_uid_that_is_no_uid_still_gets_a_valid_id(self) -> None:
        (resource,) = imaging_selections(hand_made(sop_instance_uid="1.2.3-bad"), CTX)
        check_r5(resource)
        assert selection_ids.decode(resource["id"]) is None
        assert resource["identifier"] == [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3-bad"}]
