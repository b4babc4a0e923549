"""The R5 base through the ASGI app with a mocked PACS: shape, version negotiation, manifest faults, fuzzing."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from app.dicom.kos import KOS_SOP_CLASS_UID
from app.fhir.search_params import IMAGING_SELECTION_PARAMS
from tests.api.conftest import PACS, instance_row, study_row

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")


def _study(pacs, instances, uid: str = "1.2.3"):
    pacs.get(url__regex=rf"^{PACS}/studies").mock(
        return_value=httpx.Response(200, json=[study_row(uid, modalities=("CT", "KO"))])
    )
    pacs.get(url__regex=rf"^{PACS}/instances").mock(return_value=httpx.Response(200, json=instances))


def ko_row(study: str, series: str, sop: str):
    row = instance_row(study, series, sop, modality="KO")
    row["00080016"] = {"vr": "UI", "Value": [KOS_SOP_CLASS_UID]}
    return row


def test_r5_study_shape_and_metadata(pacs, client):
    _study(pacs, [instance_row("1.2.3", "1.2.3.1", "1.2.3.1.1")])
    study = client.get("/fhir/R5/ImagingStudy/1.2.3").json()  # checked as R5 by the checking client
    assert study["modality"] == [{"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]}]
    assert study["series"][0]["bodySite"]["concept"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert client.get("/fhir/R5/metadata").json()["fhirVersion"] == "5.0.0"
    assert client.get("/fhir/R4/ImagingStudy/1.2.3").json()["modality"][0]["code"] == "CT"


@pytest.mark.parametrize(
    ("base", "accept", "status"),
    [
        ("R5", "application/fhir+json; fhirVersion=5.0", 200),
        ("R5", "application/fhir+json; fhirVersion=4.0", 406),
        ("R4", "application/fhir+json; fhirVersion=5.0", 406),
        ("R4", "application/fhir+json; fhirVersion=4.0", 200),
    ],
)
def test_each_base_speaks_its_version(client, base, accept, status):
    r = client.get(f"/fhir/{base}/metadata", headers={"Accept": accept})
    assert r.status_code == status and r.json()["resourceType"] in ("CapabilityStatement", "OperationOutcome")


def test_unreadable_rejection_note_is_a_clean_502(pacs, client):
    pacs.get(url__regex=rf"^{PACS}/studies/1.2.3/series/1.2.3.9/metadata").mock(
        return_value=httpx.Response(500, text="secret stack trace")
    )
    _study(pacs, [instance_row("1.2.3", "1.2.3.1", "1.2.3.1.1"), ko_row("1.2.3", "1.2.3.9", "1.2.3.9.1")])
    r = client.get("/fhir/R4/ImagingStudy/1.2.3")
    assert r.status_code == 502 and r.json()["resourceType"] == "OperationOutcome"
    assert "secret" not in r.text and "pacs.test" not in r.text


def test_kos_metadata_is_read_once_and_rejections_apply(pacs, client):
    from tests.support.kos import REJECTED_FOR_QUALITY, kos_json, make_kos, make_study

    images = make_study(5, "api", patient_id="MRN1", patient_name="Doe^Jane")
    note = make_kos(images[:1], title=REJECTED_FOR_QUALITY, seed=5)
    study, series = note.StudyInstanceUID, note.SeriesInstanceUID
    route = pacs.get(url__regex=rf"^{PACS}/studies/{study}/series/{series}/metadata").mock(
        return_value=httpx.Response(200, json=[kos_json(note)])
    )
    rows = [instance_row(study, images[0].SeriesInstanceUID, ds.SOPInstanceUID) for ds in images]
    _study(pacs, [*rows, ko_row(study, series, note.SOPInstanceUID)], study)
    for _ in range(3):
        r = client.get(f"/fhir/R4/ImagingStudy/{study}", headers={"Cache-Control": "no-cache"})
        shown = {i["uid"] for s in r.json()["series"] for i in s["instance"]}
        assert images[0].SOPInstanceUID not in shown and images[1].SOPInstanceUID in shown
    assert route.call_count == 1  # a stored KOS never changes: read once, kept


NAMES = [p.name for p in IMAGING_SELECTION_PARAMS] + ["patient.identifier", "_include", "_count", "code:text", "x"]
ALPHABET = st.sampled_from([*list("AZaz09.-_:/|,\\*?^%&=+ #ü"), "urn:oid:", "1.2.3", "ImagingStudy/", "ge2020"])


@hypothesis.settings(
    max_examples=200, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)
@hypothesis.given(
    params=st.lists(st.tuples(st.sampled_from(NAMES), st.lists(ALPHABET, max_size=8).map("".join)), max_size=4)
)
def test_no_imaging_selection_query_causes_a_server_error(pacs, client, params):
    pacs.get(url__startswith=PACS).mock(return_value=httpx.Response(200, json=[]))
    query = "&".join(f"{quote(k, safe=':.')}={quote(v, safe='')}" for k, v in params)
    r = client.get(f"/fhir/R5/ImagingSelection?{query}")
    assert r.status_code < 500, (query, r.text)
    assert r.json()["resourceType"] in ("Bundle", "OperationOutcome")


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"resourceType": "Patient"}', b"x" * 10])
def test_bad_create_bodies_are_400(client, body):
    r = client.post("/fhir/R5/ImagingSelection", content=body, headers={"content-type": "application/fhir+json"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def _manifest_pacs(pacs) -> tuple[dict[str, str], dict[str, str]]:
    """One KOS selecting two series, BodyPartExamined KNEE (coded, PS3.16 Annex L) and SPLEENISH (no code).
    Returns the series UIDs by body part and the KOS's study and series."""
    from tests.support.kos import FOR_TEACHING, kos_json, make_kos, make_study

    knee, other = make_study(7, "api-bs", patient_id="MRN1", patient_name="Doe^Jane", series_sizes=(1, 1))
    kos = make_kos([knee, other], title=FOR_TEACHING, description="Key images", observer_name="Roe^Rick", seed=7)
    study, series = str(kos.StudyInstanceUID), str(kos.SeriesInstanceUID)
    pacs.get(url__regex=rf"^{PACS}/instances").mock(
        return_value=httpx.Response(200, json=[ko_row(study, series, str(kos.SOPInstanceUID))])
    )
    pacs.get(url__regex=rf"^{PACS}/studies/{study}/series/{series}/metadata").mock(
        return_value=httpx.Response(200, json=[kos_json(kos)])
    )
    parts = {"KNEE": str(knee.SeriesInstanceUID), "SPLEENISH": str(other.SeriesInstanceUID)}
    pacs.get(url__regex=rf"^{PACS}/series").mock(
        return_value=httpx.Response(
            200, json=[instance_row(study, uid, "9.9", body_part=part) for part, uid in parts.items()]
        )
    )
    pacs.get(url__regex=rf"^{PACS}/studies").mock(return_value=httpx.Response(200, json=[study_row(study)]))
    return parts, {"study": study, "series": series}


def test_imaging_selection_body_site_is_one_codeable_reference(pacs, client):
    """R5 ImagingSelection.bodySite is 0..1 CodeableReference(BodyStructure) (imagingselection.html), taken from
    the selected series' BodyPartExamined. The checking client runs check_r5 on every answer, so a list here (issue
    9 item 3) fails the request itself."""
    parts, _ = _manifest_pacs(pacs)
    r = client.get("/fhir/R5/ImagingSelection?patient.identifier=MRN1")
    assert r.status_code == 200, r.text
    sites = {e["resource"]["seriesUid"]: e["resource"].get("bodySite") for e in r.json()["entry"]}
    assert sites == {
        parts["KNEE"]: {
            "concept": {
                "coding": [{"system": "http://snomed.info/sct", "code": "72696002", "display": "Knee"}],
                "text": "KNEE",
            }
        },
        parts["SPLEENISH"]: {"concept": {"text": "SPLEENISH"}},
    }
    # The body-site search reads the same element.
    found = client.get("/fhir/R5/ImagingSelection?patient.identifier=MRN1&body-site=KNEE").json()
    assert [e["resource"]["seriesUid"] for e in found.get("entry", [])] == [parts["KNEE"]]


def test_every_element_of_real_r5_answers_has_its_cardinality_checked(pacs, client):
    """Whatever element we emit at /fhir/R5, a list where it is 0..1 or a single value where it is 0..* fails
    check_r5: each element of real answers (every resource type, bodySite included) is flipped in turn."""
    from app.fhir import patient_ids
    from tests.support.fhir_check_r5 import FhirCheckError, cardinality_flips, check_r5

    _, kos = _manifest_pacs(pacs)
    study = kos["study"]
    pid = patient_ids.encode("MRN1", None)
    bodies = [
        client.get(url).json()
        for url in (
            "/fhir/R5/ImagingSelection?patient.identifier=MRN1&_include=ImagingSelection:endpoint"
            "&_include=ImagingSelection:derived-from",
            f"/fhir/R5/ImagingStudy?_id={study}&_include=ImagingStudy:endpoint&_include=ImagingStudy:patient",
            f"/fhir/R5/ImagingStudy/{study}",
            f"/fhir/R5/Patient/{pid}",
            "/fhir/R5/Endpoint/wado-rs",
            "/fhir/R5/metadata",
            "/fhir/R5/Endpoint/nope",
        )
    ]
    assert [b["resourceType"] for b in bodies] == [
        *["Bundle"] * 2,
        "ImagingStudy",
        "Patient",
        "Endpoint",
        "CapabilityStatement",
        "OperationOutcome",
    ]
    assert "bodySite" in bodies[0]["entry"][0]["resource"]
    missed, flips = [], 0
    for body in bodies:
        for path, bad in cardinality_flips(body):
            flips += 1
            try:
                check_r5(bad)
            except FhirCheckError:
                continue
            missed.append(f"{body['resourceType']}.{path}")
    assert missed == [] and flips > 500, (flips, missed)
