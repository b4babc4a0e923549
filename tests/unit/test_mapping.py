"""app.mapping: DICOM JSON (QIDO rows) → R4 ImagingStudy, and the WADO-RS Endpoint.

Golden input: tests/data/qido_study_ct.json (one study row, with the includefields the facade asks for) and
tests/data/qido_instances_ct.json (its instance rows, in PACS order, not sorted).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy

from app.dicom import dicom_json as dj
from app.fhir import patient_ids
from app.mapping.endpoint import wado_endpoint
from app.mapping.imaging_study import MappingContext, imaging_study, subject_reference
from tests.support import fhir_check

DATA = Path(__file__).resolve().parent.parent / "data"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
CT_CLASS = {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}
SR_CLASS = {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.88.11"}
KO_CLASS = {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.88.59"}
AXIAL = "ORIGINAL\\PRIMARY\\AXIAL"
ENDPOINT = [{"reference": "Endpoint/wado-rs"}]
CTX = MappingContext(accession_system="http://hospital-a.example.org/acc")


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


@pytest.fixture
def study() -> dj.Dataset:
    return load("qido_study_ct.json")[0]


@pytest.fixture
def instances() -> list[dj.Dataset]:
    return load("qido_instances_ct.json")


def valid(resource: dict[str, Any]) -> dict[str, Any]:
    """Validate, then return the resource without its generated narrative (tested in test_narrative.py)."""
    ImagingStudy.model_validate(resource)
    fhir_check.check(resource)  # plus: no empty values, bindings, dateTime with zone
    assert resource["text"]["status"] == "generated"
    return {k: v for k, v in resource.items() if k != "text"}


def series_uid(n: str) -> str:
    return f"{STUDY_UID}.{n}"


EXPECTED = {
    "resourceType": "ImagingStudy",
    "id": STUDY_UID,
    "identifier": [
        {"system": "urn:dicom:uid", "value": "urn:oid:" + STUDY_UID},
        {
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "system": "http://hospital-a.example.org/acc",
            "value": "ACC-0001",
        },
    ],
    "status": "available",
    "modality": [{"system": DCM, "code": "CT"}],  # KO and SR are not acquisition modalities
    "subject": {
        "reference": "Patient/" + patient_ids.encode("MRN0100", "HOSP-A"),
        "identifier": {"system": "urn:x-imaging-facade:issuer:HOSP-A", "value": "MRN0100"},
        "display": "Dr. Jürgen Müller",
    },
    "started": "2020-01-15T10:15:00+01:00",
    "referrer": {"display": "Tarou Yamada"},  # the alphabetic group of a 3-group PN
    "endpoint": ENDPOINT,
    "numberOfSeries": 4,
    "numberOfInstances": 7,
    "description": "CT CHEST W/O",
    "series": [
        {
            "uid": series_uid("1"),
            "number": 1,
            "modality": {"system": DCM, "code": "CT"},
            "description": "Scout",
            "numberOfInstances": 2,
            "endpoint": ENDPOINT,
            "bodySite": {"system": SNOMED, "code": "72696002", "display": "Knee"},
            "laterality": {"system": SNOMED, "code": "7771000", "display": "Left"},
            "instance": [
                {"uid": series_uid("1.1"), "sopClass": CT_CLASS, "number": 1},
                {"uid": series_uid("1.2"), "sopClass": CT_CLASS},  # no InstanceNumber: sorted last
            ],
        },
        {
            "uid": series_uid("2"),
            "number": 2,
            "modality": {"system": DCM, "code": "CT"},
            "description": "Thorax 1.0 B70f",
            "numberOfInstances": 3,
            "endpoint": ENDPOINT,
            "bodySite": {"system": SNOMED, "code": "816094009", "display": "Chest"},
            "started": "2020-01-15T10:17:33.250000+01:00",
            "instance": [
                {"uid": series_uid(f"2.{n}"), "sopClass": CT_CLASS, "number": n, "title": AXIAL} for n in (1, 2, 3)
            ],
        },
        {
            "uid": series_uid("91"),
            "number": 99,
            "modality": {"system": DCM, "code": "SR"},
            "numberOfInstances": 1,
            "endpoint": ENDPOINT,
            "instance": [{"uid": series_uid("91.1"), "sopClass": SR_CLASS, "number": 1, "title": "Radiology report"}],
        },
        {
            "uid": series_uid("90"),
            "modality": {"system": DCM, "code": "KO"},  # no SeriesNumber: last
            "numberOfInstances": 1,
            "endpoint": ENDPOINT,
            "instance": [{"uid": series_uid("90.1"), "sopClass": KO_CLASS, "number": 1, "title": "KEY_IMAGES"}],
        },
    ],
}


class TestFullStudy:
    def test_whole_resource(self, study, instances):
        assert valid(imaging_study(study, instances, CTX)) == EXPECTED

    def test_the_r4b_model_reads_what_we_emit(self, study, instances):
        model = ImagingStudy.model_validate(imaging_study(study, instances, CTX))
        assert model.series[1].bodySite.code == "816094009"
        assert model.series[3].modality.code == "KO"
        assert str(model.identifier[0].value) == "urn:oid:" + STUDY_UID

    def test_input_order_does_not_matter(self, study, instances):
        assert valid(imaging_study(study, list(reversed(instances)), CTX)) == EXPECTED

    def test_inputs_are_not_modified(self, study, instances):
        before = copy.deepcopy((study, instances))
        imaging_study(study, instances, CTX)
        assert (study, instances) == before

    def test_without_instances_the_counts_come_from_the_study_row(self, study):
        res = valid(imaging_study(study, None, CTX))
        assert "series" not in res
        assert (res["numberOfSeries"], res["numberOfInstances"]) == (4, 7)

    def test_empty_instance_list_means_no_series(self, study):
        res = valid(imaging_study(study, [], CTX))
        assert "series" not in res
        # No instance rows came back: the PACS's own study-level counts stand.
        assert (res["numberOfSeries"], res["numberOfInstances"]) == (
            dj.integer(study, dj.NUMBER_OF_SERIES),
            dj.integer(study, dj.NUMBER_OF_STUDY_INSTANCES),
        )

    def test_rows_without_series_or_sop_uid_are_skipped(self, study, instances):
        broken = [
            {k: v for k, v in instances[0].items() if k != dj.SOP_INSTANCE_UID},
            {k: v for k, v in instances[0].items() if k != dj.SERIES_UID},
        ]
        assert valid(imaging_study(study, instances + broken, CTX)) == EXPECTED


class TestStudyLevel:
    def test_no_accession_system_gives_type_only(self, study):
        res = valid(imaging_study(study, None, MappingContext()))
        assert res["identifier"][1] == {
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "value": "ACC-0001",
        }

    def test_empty_accession_and_description_are_omitted(self, study):
        study[dj.ACCESSION] = {"vr": "SH"}
        study[dj.STUDY_DESCRIPTION] = {"vr": "LO"}
        res = valid(imaging_study(study, None, CTX))
        assert res["identifier"] == [{"system": "urn:dicom:uid", "value": "urn:oid:" + STUDY_UID}]
        assert "description" not in res

    def test_blank_description_is_omitted(self, study):
        study[dj.STUDY_DESCRIPTION] = {"vr": "LO", "Value": ["   "]}
        assert "description" not in valid(imaging_study(study, None, CTX))

    def test_only_non_acquisition_modalities_gives_no_modality(self, study):
        study[dj.MODALITIES_IN_STUDY] = {"vr": "CS", "Value": ["KO", "SR", "PR"]}
        assert "modality" not in valid(imaging_study(study, None, CTX))

    def test_modalities_keep_the_pacs_order(self, study):
        study[dj.MODALITIES_IN_STUDY] = {"vr": "CS", "Value": ["MR", "SR", "CT"]}
        assert imaging_study(study, None, CTX)["modality"] == [
            {"system": DCM, "code": "MR"},
            {"system": DCM, "code": "CT"},
        ]

    @pytest.mark.parametrize(
        ("offset", "zone", "started"),
        [
            ("+0100", None, "2020-01-15T10:15:00+01:00"),
            (None, ZoneInfo("Europe/Berlin"), "2020-01-15T10:15:00+01:00"),
            (None, ZoneInfo("America/New_York"), "2020-01-15T10:15:00-05:00"),
            (None, None, "2020-01-15"),  # no zone known: a time without zone is not valid FHIR
            ("-0300", ZoneInfo("Europe/Berlin"), "2020-01-15T10:15:00-03:00"),
        ],
    )
    def test_started_zone(self, study, offset, zone, started):
        if offset is None:
            del study[dj.TIMEZONE_OFFSET]
        else:
            study[dj.TIMEZONE_OFFSET] = {"vr": "SH", "Value": [offset]}
        res = valid(imaging_study(study, None, MappingContext(zone=zone)))
        assert res["started"] == started

    def test_out_of_range_timezone_offset_is_tolerated(self, study):
        study[dj.TIMEZONE_OFFSET] = {"vr": "SH", "Value": ["+2400"]}
        res = imaging_study(study, None, MappingContext())
        assert res["started"] == "2020-01-15"

    def test_summer_study_in_the_pacs_zone_has_the_dst_offset(self, study):
        del study[dj.TIMEZONE_OFFSET]
        study[dj.STUDY_DATE] = {"vr": "DA", "Value": ["20200715"]}
        res = imaging_study(study, None, MappingContext(zone=ZoneInfo("Europe/Berlin")))
        assert res["started"] == "2020-07-15T10:15:00+02:00"

    @pytest.mark.parametrize("da", ["", "2020-01-15", "20201345"])
    def test_bad_or_empty_study_date_omits_started(self, study, da):
        study[dj.STUDY_DATE] = {"vr": "DA", "Value": [da]} if da else {"vr": "DA"}
        assert "started" not in valid(imaging_study(study, None, CTX))

    def test_minimal_row_with_only_a_study_uid(self):
        res = valid(imaging_study({dj.STUDY_UID: {"vr": "UI", "Value": ["1.2.3"]}}, None, MappingContext()))
        assert res == {
            "resourceType": "ImagingStudy",
            "id": "1.2.3",
            "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}],
            "status": "available",
            "subject": {"reference": "Patient/" + patient_ids.encode("", None)},
            "endpoint": ENDPOINT,
        }

    def test_empty_type_2_attributes_are_tolerated(self):
        row = {
            dj.STUDY_UID: {"vr": "UI", "Value": ["1.2.3"]},
            dj.STUDY_DATE: {"vr": "DA"},
            dj.REFERRING_PHYSICIAN: {"vr": "PN"},
            dj.PATIENT_NAME: {"vr": "PN"},
            dj.PATIENT_ID: {"vr": "LO"},
            dj.MODALITIES_IN_STUDY: {"vr": "CS"},
            dj.NUMBER_OF_SERIES: {"vr": "IS"},
        }
        res = valid(imaging_study(row, None, MappingContext()))
        assert set(res) == {"resourceType", "id", "identifier", "status", "subject", "endpoint"}

    def test_counts_sent_as_strings_are_read(self, study):
        study[dj.NUMBER_OF_SERIES] = {"vr": "IS", "Value": ["4"]}
        study[dj.NUMBER_OF_STUDY_INSTANCES] = {"vr": "IS", "Value": [" 7 "]}
        res = imaging_study(study, None, CTX)
        assert (res["numberOfSeries"], res["numberOfInstances"]) == (4, 7)

    def test_endpoint_id_from_context(self, study):
        assert imaging_study(study, None, MappingContext(endpoint_id="pacs-1"))["endpoint"] == [
            {"reference": "Endpoint/pacs-1"}
        ]


class TestNames:
    def test_three_group_pn_uses_the_alphabetic_group(self, study):
        assert imaging_study(study, None, CTX)["referrer"] == {"display": "Tarou Yamada"}

    def test_ideographic_only_pn_is_kept(self, study):
        study[dj.PATIENT_NAME] = {"vr": "PN", "Value": [{"Ideographic": "山田^太郎"}]}
        assert valid(imaging_study(study, None, CTX))["subject"]["display"] == "太郎 山田"

    def test_non_ascii_names_are_preserved(self, study):
        study[dj.PATIENT_NAME] = {"vr": "PN", "Value": [{"Alphabetic": "Gómez^María José"}]}
        assert imaging_study(study, None, CTX)["subject"]["display"] == "María José Gómez"

    def test_pn_as_a_plain_string_is_tolerated(self, study):
        study[dj.PATIENT_NAME] = {"vr": "PN", "Value": ["Doe^John^^Mr^Jr"]}
        study[dj.REFERRING_PHYSICIAN] = {"vr": "PN", "Value": ["Yamada^Tarou=山田^太郎=やまだ^たろう"]}
        res = valid(imaging_study(study, None, CTX))
        assert res["subject"]["display"] == "Mr John Doe Jr"
        assert res["referrer"] == {"display": "Tarou Yamada"}

    def test_trailing_caret_is_insignificant(self, study):
        study[dj.PATIENT_NAME] = {"vr": "PN", "Value": [{"Alphabetic": "Cher^"}]}
        assert imaging_study(study, None, CTX)["subject"]["display"] == "Cher"

    @pytest.mark.parametrize("value", [{"Alphabetic": ""}, {"Alphabetic": "^^^"}, "", 42, None])
    def test_empty_or_odd_names_are_omitted(self, study, value):
        study[dj.PATIENT_NAME] = {"vr": "PN", "Value": [value]}
        study[dj.REFERRING_PHYSICIAN] = {"vr": "PN", "Value": [value]}
        res = valid(imaging_study(study, None, CTX))
        assert "display" not in res["subject"]
        assert "referrer" not in res


class TestSubject:
    def test_without_issuer_uses_the_default_system(self, study):
        del study[dj.ISSUER_OF_PATIENT_ID]
        assert subject_reference(study, CTX) == {
            "reference": "Patient/" + patient_ids.encode("MRN0100", None),
            "identifier": {"system": "urn:x-imaging-facade:patient-id", "value": "MRN0100"},
            "display": "Dr. Jürgen Müller",
        }

    def test_configured_issuer_system(self, study):
        ctx = MappingContext(issuer_systems={"HOSP-A": "http://hospital-a.example.org/mrn"})
        assert subject_reference(study, ctx)["identifier"] == {
            "system": "http://hospital-a.example.org/mrn",
            "value": "MRN0100",
        }

    def test_the_reference_decodes_to_the_pair(self, study):
        ref = subject_reference(study, CTX)["reference"]
        assert patient_ids.decode(ref.removeprefix("Patient/")) == ("MRN0100", "HOSP-A")

    def test_non_ascii_patient_id_and_issuer(self, study):
        study[dj.PATIENT_ID] = {"vr": "LO", "Value": ["Müller-7"]}
        study[dj.ISSUER_OF_PATIENT_ID] = {"vr": "LO", "Value": ["Klinikum Süd"]}
        res = valid(imaging_study(study, None, CTX))
        assert res["subject"]["identifier"] == {
            "system": "urn:x-imaging-facade:issuer:Klinikum%20S%C3%BCd",
            "value": "Müller-7",
        }
        assert patient_ids.decode(res["subject"]["reference"][8:]) == ("Müller-7", "Klinikum Süd")


def _instance(series: str, sop: str, **tags: Any) -> dj.Dataset:
    row: dj.Dataset = {
        dj.STUDY_UID: {"vr": "UI", "Value": [STUDY_UID]},
        dj.SERIES_UID: {"vr": "UI", "Value": [series]},
        dj.SOP_INSTANCE_UID: {"vr": "UI", "Value": [sop]},
    }
    for tag, (vr, value) in tags.items():
        row[tag] = {"vr": vr, "Value": [value]}
    return row


class TestSeriesLevel:
    def test_series_sort_by_number_then_uid_unnumbered_last(self, study):
        rows = [
            _instance("1.5", "1.5.1"),
            _instance("1.9", "1.9.1", **{dj.SERIES_NUMBER: ("IS", 10)}),
            _instance("1.3", "1.3.1", **{dj.SERIES_NUMBER: ("IS", 2)}),
            _instance("1.4", "1.4.1"),
            _instance("1.2", "1.2.1", **{dj.SERIES_NUMBER: ("IS", 2)}),
        ]
        res = valid(imaging_study(study, rows, CTX))
        assert [s["uid"] for s in res["series"]] == ["1.2", "1.3", "1.9", "1.4", "1.5"]

    def test_instance_sort_by_number_then_uid(self, study):
        rows = [
            _instance("1.2", "1.2.30", **{dj.INSTANCE_NUMBER: ("IS", 2)}),
            _instance("1.2", "1.2.9"),
            _instance("1.2", "1.2.10", **{dj.INSTANCE_NUMBER: ("IS", 2)}),
            _instance("1.2", "1.2.5", **{dj.INSTANCE_NUMBER: ("IS", 1)}),
            _instance("1.2", "1.2.1"),
        ]
        [series] = valid(imaging_study(study, rows, CTX))["series"]
        assert [i["uid"] for i in series["instance"]] == ["1.2.5", "1.2.10", "1.2.30", "1.2.1", "1.2.9"]

    def test_missing_optional_tags_are_tolerated(self, study):
        [series] = valid(imaging_study(study, [_instance("1.2", "1.2.1")], CTX))["series"]
        assert series == {
            "uid": "1.2",
            "modality": {"system": DCM, "code": "OT"},  # 1..1 in R4: "Other" keeps it valid
            "numberOfInstances": 1,
            "endpoint": ENDPOINT,
            # sopClass is 1..1: the Storage service class root stands in for a missing SOPClassUID.
            "instance": [
                {"uid": "1.2.1", "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4"}}
            ],
        }

    def test_negative_numbers_are_not_unsigned_ints(self, study):
        rows = [_instance("1.2", "1.2.1", **{dj.SERIES_NUMBER: ("IS", -1), dj.INSTANCE_NUMBER: ("IS", -5)})]
        [series] = valid(imaging_study(study, rows, CTX))["series"]
        assert "number" not in series and "number" not in series["instance"][0]

    @pytest.mark.parametrize(
        ("term", "body_site"),
        [
            ("CHEST", {"system": SNOMED, "code": "816094009", "display": "Chest"}),
            ("chest", {"system": SNOMED, "code": "816094009", "display": "Chest"}),
            ("ABDOMEN", {"system": SNOMED, "code": "818981001", "display": "Abdomen"}),
            ("THORAX-ISH", {"display": "THORAX-ISH"}),  # no Annex L entry: the term, no invented code
        ],
    )
    def test_body_site(self, study, term, body_site):
        rows = [_instance("1.2", "1.2.1", **{dj.BODY_PART: ("CS", term)})]
        [series] = imaging_study(study, rows, CTX)["series"]
        assert series["bodySite"] == body_site

    @pytest.mark.parametrize(
        ("laterality", "coding"),
        [
            ("L", {"system": SNOMED, "code": "7771000", "display": "Left"}),
            ("R", {"system": SNOMED, "code": "24028007", "display": "Right"}),
            ("B", {"system": SNOMED, "code": "51440002", "display": "Right and left"}),
            ("U", None),
            ("l", None),
        ],
    )
    def test_laterality(self, study, laterality, coding):
        rows = [_instance("1.2", "1.2.1", **{dj.LATERALITY: ("CS", laterality)})]
        [series] = valid(imaging_study(study, rows, CTX))["series"]
        assert series.get("laterality") == coding

    def test_series_started_uses_the_study_offset(self, study):
        rows = [_instance("1.2", "1.2.1", **{dj.SERIES_DATE: ("DA", "20200116"), dj.SERIES_TIME: ("TM", "0001")})]
        [series] = imaging_study(study, rows, CTX)["series"]
        assert series["started"] == "2020-01-16T00:01:00+01:00"

    def test_instance_title_prefers_content_label_then_document_title_then_image_type(self, study):
        both = _instance("1.2", "1.2.1", **{dj.CONTENT_LABEL: ("CS", "LABEL"), dj.DOCUMENT_TITLE: ("LO", "Doc")})
        both[dj.IMAGE_TYPE] = {"vr": "CS", "Value": ["DERIVED", "SECONDARY"]}
        doc = _instance("1.2", "1.2.2", **{dj.DOCUMENT_TITLE: ("LO", "Doc")})
        image = _instance("1.2", "1.2.3")
        image[dj.IMAGE_TYPE] = {"vr": "CS", "Value": ["DERIVED", "SECONDARY"]}
        [series] = valid(imaging_study(study, [both, doc, image], CTX))["series"]
        assert [i.get("title") for i in series["instance"]] == ["LABEL", "Doc", "DERIVED\\SECONDARY"]

    def test_ko_and_sr_series_are_kept_with_their_modality(self, study, instances):
        res = imaging_study(study, instances, CTX)
        assert {s["modality"]["code"] for s in res["series"]} == {"CT", "SR", "KO"}
        assert res["modality"] == [{"system": DCM, "code": "CT"}]


class TestEndpoint:
    def test_wado_endpoint(self):
        res = wado_endpoint("wado-rs", "https://pacs.example.org/dicom-web/")
        assert res == {
            "resourceType": "Endpoint",
            "id": "wado-rs",
            "extension": [
                {
                    "url": "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token",
                    "valueBoolean": False,
                }
            ],
            "status": "active",
            "connectionType": {
                "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                "code": "dicom-wado-rs",
            },
            "name": "PACS WADO-RS",
            "payloadType": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type", "code": "any"}
                    ],
                    "text": "DICOM WADO-RS",
                }
            ],
            "payloadMimeType": ["application/dicom"],
            "address": "https://pacs.example.org/dicom-web",  # the service base, no trailing slash
        }
        Endpoint.model_validate(res)
        fhir_check.check(res)
