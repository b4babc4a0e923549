"""KOS manifest → IHE RAD MADO DocumentReferences and the FHIR document Bundle (app.mapping.document_reference),
on plain DICOM JSON rows; every resource through the R4 validators (fhir.resources R4B and google-fhir-r4)."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

import pytest

from app.dicom.kos import KOS_SOP_CLASS_UID, Code, KeyObjectSelection, PersonName, ReferencedInstance
from app.fhir import patient_ids
from app.mapping import document_reference as mado
from app.mapping.imaging_study import MappingContext
from app.mapping.manifest_bundle import manifest_bundle
from tests.support.fhir_check import check

CT = "1.2.840.10008.5.1.4.1.1.2"
KOS_UID = "2.25.100"
HOME, OTHER = "2.25.1", "2.25.2"
BASE = "https://facade.example/fhir/R4"
WADO = "https://pacs.example/dicom-web"


def _v(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def study(uid: str, accession: str | None, date: str = "20240105", time: str = "101500") -> dict[str, Any]:
    row = {
        "0020000D": _v("UI", uid),
        "00100020": _v("LO", "MRN1"),
        "00100010": _v("PN", {"Alphabetic": "Pérez^Ana"}),
        "00100030": _v("DA", "19700101"),
        "00100040": _v("CS", "F"),
        "00080020": _v("DA", date),
        "00080030": _v("TM", time),
        "00080201": _v("SH", "+0100"),
        "00080061": _v("CS", "CT", "KO"),
    }
    if accession:
        row["00080050"] = _v("SH", accession)
    return row


def instance(
    study_uid: str, series: str, sop: str, *, modality: str, number: int, part: str, frames: int | None = None
):
    row = {
        "0020000D": _v("UI", study_uid),
        "0020000E": _v("UI", series),
        "00080018": _v("UI", sop),
        "00080016": _v("UI", CT),
        "00080060": _v("CS", modality),
        "00200011": _v("IS", 1),
        "00200013": _v("IS", number),
        "00180015": _v("CS", part),
    }
    if frames:
        row["00280008"] = _v("IS", frames)
    return row


REFS = (
    ReferencedInstance(HOME, "2.25.11", "2.25.111", CT),
    ReferencedInstance(HOME, "2.25.11", "2.25.112", CT, frames=(2, 4)),
    ReferencedInstance(OTHER, "2.25.21", "2.25.211", CT),
)


def kos(**overrides: Any) -> KeyObjectSelection:
    fields: dict[str, Any] = {
        "sop_instance_uid": KOS_UID,
        "study_uid": HOME,
        "series_uid": "2.25.19",
        "patient_id": "MRN1",
        "issuer_of_patient_id": None,
        "patient_name": PersonName("Pérez^Ana"),
        "title": Code("113004", "DCM", "For Teaching"),
        "description": "Classic findings",
        "observer_name": PersonName("Roe^Rick"),
        "device_observer_name": None,
        "content_date": "20240301",
        "content_time": "093000",
        "timezone_offset": "+0100",
        "references": REFS,
    }
    return KeyObjectSelection(**(fields | overrides))


def manifest(doc: KeyObjectSelection | None = None, *, rows: bool = True) -> mado.Manifest:
    doc = doc or kos()
    studies = {HOME: study(HOME, "ACC1"), OTHER: study(OTHER, "ACC2", date="20240210")} if rows else {}
    instances = (
        {
            "2.25.111": instance(HOME, "2.25.11", "2.25.111", modality="CT", number=1, part="CHEST"),
            "2.25.112": instance(HOME, "2.25.11", "2.25.112", modality="CT", number=2, part="CHEST", frames=5),
            "2.25.211": instance(OTHER, "2.25.21", "2.25.211", modality="MR", number=7, part="KNEE"),
        }
        if rows
        else {}
    )
    return mado.Manifest(doc, doc.canonical_uid, studies, instances)


def ctx(**overrides: Any) -> mado.DocumentContext:
    return mado.DocumentContext(MappingContext(**overrides), BASE, WADO, False, "0.1.0")


def test_two_forms_linked_and_valid():
    dicom, fhir = mado.document_references(manifest(), ctx())
    for res in (dicom, fhir):
        check(res)
        assert res["masterIdentifier"] == {"system": "urn:dicom:uid", "value": f"urn:oid:{KOS_UID}"}
        assert res["masterIdentifier"] in res["identifier"]  # MADO invariant mado-docref-1
        assert res["status"] == "current"
        assert res["type"]["coding"][0]["code"] == "18748-4" and res["category"]
        assert res["subject"]["reference"] == f"Patient/{patient_ids.encode('MRN1', None)}"
        assert res["date"] == "2024-03-01T09:30:00+01:00"
        assert res["author"] == [{"display": "Rick Roe"}]
        assert res["description"] == "For Teaching: Classic findings"
    assert dicom["id"] == KOS_UID and fhir["id"] == mado.fhir_document_id(KOS_UID)
    assert dicom["relatesTo"] == [{"code": "transforms", "target": {"reference": f"DocumentReference/{fhir['id']}"}}]
    assert fhir["relatesTo"] == [{"code": "transforms", "target": {"reference": f"DocumentReference/{KOS_UID}"}}]
    (content,) = dicom["content"]
    assert content["attachment"]["contentType"] == "application/dicom"
    assert content["attachment"]["url"] == f"{WADO}/studies/{HOME}/series/2.25.19/instances/{KOS_UID}"
    assert content["format"]["system"] == "http://dicom.nema.org/resources/ontology/DCMUID"
    assert content["format"]["code"] == KOS_SOP_CLASS_UID
    (content,) = fhir["content"]
    assert content["attachment"] == content["attachment"] | {
        "contentType": "application/fhir+json",
        "url": f"{BASE}/Bundle/{fhir['id']}",
    }
    assert content["format"]["code"] == "urn:ihe:rad:MADO:fhir-manifest:2026"


def test_author_is_who_made_the_manifest():
    # A manifest made through the API: the SMART fhirUser as the person observer's login name, or the facade as
    # device observer; both forms carry the same authors, and the document Bundle's Composition lists them too.
    person = kos(observer_name=PersonName("Roe^Jane"), observer_login="https://ehr.example.org/fhir/Practitioner/7")
    device = kos(observer_name=None, device_observer_uid="2.25.4242", device_observer_name="Imaging FHIR facade")
    for doc, author in (
        (person, {"reference": "https://ehr.example.org/fhir/Practitioner/7", "display": "Jane Roe"}),
        (
            device,
            {
                "type": "Device",
                "identifier": {"system": "urn:dicom:uid", "value": "urn:oid:2.25.4242"},
                "display": "Imaging FHIR facade",
            },
        ),
    ):
        for res in mado.document_references(manifest(doc), ctx()):
            check(res)
            assert res["author"] == [author]
            assert f"Selected by: {author['display']}" in res["text"]["div"]
        bundle = manifest_bundle(manifest(doc), ctx(), now="2024-03-01T09:30:00+01:00")
        check(bundle)
        assert author in bundle["entry"][0]["resource"]["author"]


def test_context_related_period_and_cross_version_extensions():
    dicom, _ = mado.document_references(manifest(), ctx(accession_system="urn:acc"))
    context = dicom["context"]
    assert context["period"] == {"start": "2024-01-05T10:15:00+01:00"}  # the KOS's own study's started
    related = [r["identifier"] for r in context["related"]]
    assert [r["value"] for r in related] == [f"urn:oid:{HOME}", "ACC1", f"urn:oid:{OTHER}", "ACC2"]
    assert related[0]["type"]["coding"][0]["code"] == "110180" and related[0]["system"] == "urn:dicom:uid"
    assert {c["code"] for c in related[1]["type"]["coding"]} == {"ACSN", "121022"} and related[1]["system"] == "urn:acc"
    modality = [e["valueCodeableConcept"]["coding"][0]["code"] for e in dicom["extension"] if "modality" in e["url"]]
    assert modality == ["CT", "MR"]
    sites = [e["extension"][0]["valueCodeableConcept"] for e in dicom["extension"] if "bodySite" in e["url"]]
    assert [s["coding"][0]["code"] for s in sites] == ["816094009", "72696002"]


def test_without_zone_no_instant_and_without_rows_still_valid():
    doc = kos(timezone_offset=None)
    dicom, fhir = mado.document_references(manifest(doc, rows=False), ctx())
    for res in (dicom, fhir):
        check(res)
        assert "date" not in res and "period" not in res["context"] and "extension" not in res
    with_zone = mado.document_references(manifest(doc), ctx(zone=timezone(timedelta(hours=-5))))[0]
    assert with_zone["date"] == "2024-03-01T09:30:00-05:00"


def test_rejection_note_is_no_manifest():
    assert (
        mado.document_references(manifest(kos(title=Code("113001", "DCM", "Rejected for Quality Reasons"))), ctx())
        == []
    )


def test_copies_are_identifiers_of_one_manifest():
    doc = kos(sop_instance_uid="2.25.300", identical=("2.25.200",))
    m = mado.Manifest(doc, doc.canonical_uid, {}, {})
    dicom, _ = mado.document_references(m, ctx())
    assert dicom["id"] == "2.25.200" and dicom["masterIdentifier"]["value"] == "urn:oid:2.25.200"
    assert {i["value"] for i in dicom["identifier"]} == {"urn:oid:2.25.200", "urn:oid:2.25.300"}
    assert dicom["content"][0]["attachment"]["url"].endswith("/instances/2.25.300")  # the copy that is stored


@pytest.mark.parametrize("uid", ["1.2", KOS_UID, "1." + "2" * 62, "0.1.01"])
def test_ids_round_trip(uid):
    assert mado.decode_document_id(mado.kos_document_id(uid)) == (uid, "dicom")
    fhir_id = mado.fhir_document_id(uid)
    assert len(fhir_id) <= 64 and mado.decode_document_id(fhir_id) == (uid, "fhir")


@pytest.mark.parametrize("rid", ["", "abc", "x-fhir", "0-fhir", "a" * 70, "1.2-0"])
def test_foreign_ids_decode_to_nothing(rid):
    assert mado.decode_document_id(rid) is None


def test_document_bundle():
    b = manifest_bundle(manifest(), ctx(), now="2030-01-01T00:00:00+00:00")
    check(b)
    assert b["type"] == "document" and b["timestamp"] == "2024-03-01T09:30:00+01:00"
    assert b["identifier"] == {"system": "urn:dicom:uid", "value": f"urn:oid:{KOS_UID}"}
    assert b["id"] == mado.fhir_document_id(KOS_UID)
    urls = [e["fullUrl"] for e in b["entry"]]
    assert len(set(urls)) == len(urls)
    types = [e["resource"]["resourceType"] for e in b["entry"]]
    assert types == ["Composition", "ImagingStudy", "ImagingStudy", "Patient", "Endpoint", "Endpoint", "Device"]
    by_url = {e["fullUrl"]: e["resource"] for e in b["entry"]}
    comp = b["entry"][0]["resource"]
    assert comp["title"] == "For Teaching" and comp["subject"]["reference"].startswith("Patient/")
    assert f"{BASE}/{comp['subject']['reference']}" in by_url  # resolves inside the document
    assert all(a.get("reference", "").startswith("urn:uuid:") or "display" in a for a in comp["author"])
    assert by_url[comp["author"][0]["reference"]]["resourceType"] == "Device"
    (section,) = comp["section"]
    assert [by_url[r["reference"]]["resourceType"] for r in section["entry"]] == ["ImagingStudy", "ImagingStudy"]
    selected = {
        (s["uid"], i["uid"])
        for e in b["entry"]
        if e["resource"]["resourceType"] == "ImagingStudy"
        for s in e["resource"]["series"]
        for i in s["instance"]
    }
    assert selected == {(r.series_uid, r.sop_instance_uid) for r in REFS}
    home = b["entry"][1]["resource"]
    assert home["identifier"][0]["value"] == f"urn:oid:{HOME}" and home["started"] == "2024-01-05T10:15:00+01:00"
    inst = {i["uid"]: i for s in home["series"] for i in s["instance"]}
    assert inst["2.25.112"]["number"] == 2
    assert {e["url"]: e for e in inst["2.25.112"]["extension"]}[mado.SELECTED_FRAMES_URL]["valueString"] == "2,4"
    assert {e["url"]: e for e in inst["2.25.112"]["extension"]}[mado.NUMBER_OF_FRAMES_URL]["valueInteger"] == 5
    for s in home["series"]:
        (ref,) = s["endpoint"]
        assert by_url[ref["reference"]]["resourceType"] == "Endpoint"
        assert by_url[ref["reference"]]["address"] == WADO
    assert manifest_bundle(manifest(), ctx(), now="2031-01-01T00:00:00+00:00") == b  # stable re-reads


def test_document_bundle_without_rows_or_zone():
    b = manifest_bundle(manifest(kos(timezone_offset=None), rows=False), ctx(), now="2030-01-01T00:00:00+00:00")
    check(b)
    assert b["timestamp"] == "2030-01-01T00:00:00+00:00"
    studies = [e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
    uids = {i["uid"] for st in studies for s in st["series"] for i in s["instance"]}
    assert uids == {r.sop_instance_uid for r in REFS}
    assert all(i["sopClass"]["code"] == f"urn:oid:{CT}" for st in studies for s in st["series"] for i in s["instance"])
