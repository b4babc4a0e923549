"""Who made a manifest (issue 19, item 2), through the app with a mocked PACS: POST ImagingSelection stores a KOS
whose TID 1002 observer context names the SMART token's ``fhirUser`` (and its name) as the person observer, or,
without one, the facade as the device observer (Device Observer UID from ``device_observer_uid``); the answer's
``performer`` shows it, as every later read does (the answer is the stored bytes read back)."""

from __future__ import annotations

import email.parser
import email.policy
import io
from typing import Any

import httpx
import pytest
import respx
from pydicom import Dataset, dcmread

from app.settings import DEVICE_OBSERVER_UID
from tests.api.conftest import PACS, instance_row, study_row
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer

KEYS = TokenIssuer()
DCM = "http://dicom.nema.org/resources/ontology/DCM"
STUDY, SERIES, SOP = "2.25.10", "2.25.10.1", "2.25.10.1.1"
FHIR_USER = "https://ehr.example.org/fhir/Practitioner/p-7"
FACADE_DEVICE = {"system": "urn:dicom:uid", "value": f"urn:oid:{DEVICE_OBSERVER_UID}"}
BODY = {
    "resourceType": "ImagingSelection",
    "status": "available",
    "code": {"coding": [{"system": DCM, "code": "113004"}]},
    "studyUid": STUDY,
    "seriesUid": SERIES,
    "instance": [{"uid": SOP}],
}


def stored_kos(pacs: respx.MockRouter) -> list[Dataset]:
    """Mock the PACS a create talks to; the KOS documents it is sent are appended to the returned list."""
    stored: list[Dataset] = []
    pacs.get(url__regex=rf"^{PACS}/instances").respond(
        200, json=[instance_row(STUDY, SERIES, SOP) | {"00280010": {"vr": "US", "Value": [512]}}]
    )
    pacs.get(url__regex=rf"^{PACS}/studies").respond(200, json=[study_row(STUDY)])
    pacs.get(url__regex=rf"^{PACS}/series").respond(200, json=[])

    def stow(request: httpx.Request) -> httpx.Response:
        head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(head + request.content)
        items = []
        for part in message.iter_parts():
            ds = dcmread(io.BytesIO(part.get_payload(decode=True)))
            stored.append(ds)
            items.append({"00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]}})
        return httpx.Response(200, json={"00081199": {"vr": "SQ", "Value": items}})

    pacs.post(f"{PACS}/studies").mock(side_effect=stow)
    return stored


def observers(ds: Dataset) -> list[tuple[str, Any]]:
    """The HAS OBS CONTEXT items of the KOS root: (concept code, value)."""
    out = []
    for item in ds.ContentSequence:
        if item.RelationshipType == "HAS OBS CONTEXT":
            value = {
                "CODE": lambda i: i.ConceptCodeSequence[0].CodeValue,
                "PNAME": lambda i: str(i.PersonName),
                "TEXT": lambda i: i.TextValue,
                "UIDREF": lambda i: i.UID,
            }[item.ValueType](item)
            out.append((item.ConceptNameCodeSequence[0].CodeValue, value))
    return out


def create(client: Any, body: dict[str, Any] = BODY, **headers: str) -> dict[str, Any]:
    r = client.post(
        "/fhir/R5/ImagingSelection", json=body, headers={"content-type": "application/fhir+json", **headers}
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def smart(make_client, tmp_path):
    return make_client(
        auth_mode="smart", jwks_file=str(KEYS.write_jwks(tmp_path)), token_issuer=ISSUER, token_audience=AUDIENCE
    )


def test_smart_fhir_user_and_name_are_the_person_observer(pacs, smart):
    stored = stored_kos(pacs)
    h = KEYS.headers("user/ImagingSelection.c", fhirUser=FHIR_USER, family_name="Roe", given_name="Jane")
    created = create(smart, **h)
    (kos,) = stored
    assert observers(kos) == [
        ("121005", "121006"),  # Observer Type: Person
        ("121008", "Roe^Jane"),
        ("128774", FHIR_USER),  # Person Observer's Login Name
    ]
    assert created["performer"] == [{"actor": {"reference": FHIR_USER, "display": "Jane Roe"}}]


def test_smart_fhir_user_without_a_name_takes_the_manifests_performer(pacs, smart):
    stored = stored_kos(pacs)
    body = BODY | {"performer": [{"actor": {"display": "Dr Who"}}]}
    created = create(smart, body, **KEYS.headers("user/ImagingSelection.c", fhirUser="Practitioner/7"))
    assert observers(stored[0])[1:] == [("121008", "Dr Who"), ("128774", "Practitioner/7")]
    assert created["performer"] == [{"actor": {"reference": "Practitioner/7", "display": "Dr Who"}}]


def test_smart_without_fhir_user_the_facade_is_the_device_observer(pacs, smart):
    stored = stored_kos(pacs)
    created = create(smart, **KEYS.headers("user/ImagingSelection.c"))
    assert observers(stored[0]) == [
        ("121005", "121007"),  # Observer Type: Device
        ("121012", DEVICE_OBSERVER_UID),
        ("121013", "Imaging FHIR facade"),
        ("121014", "imaging-fhir-facade"),
    ]
    device = {"type": "Device", "identifier": FACADE_DEVICE, "display": "Imaging FHIR facade"}
    assert created["performer"] == [{"actor": device}]


def test_open_mode_names_the_device_from_the_setting_beside_a_stated_performer(pacs, make_client):
    stored = stored_kos(pacs)
    client = make_client(device_observer_uid="2.25.31415")
    created = create(client, BODY | {"performer": [{"actor": {"display": "Dr Who"}}]})
    assert observers(stored[0]) == [
        ("121005", "121006"),
        ("121008", "Dr Who"),
        ("121005", "121007"),
        ("121012", "2.25.31415"),
        ("121013", "Imaging FHIR facade"),
        ("121014", "imaging-fhir-facade"),
    ]
    assert created["performer"] == [
        {"actor": {"display": "Dr Who"}},
        {
            "actor": {
                "type": "Device",
                "identifier": {"system": "urn:dicom:uid", "value": "urn:oid:2.25.31415"},
                "display": "Imaging FHIR facade",
            }
        },
    ]
