"""What a POSTed ImagingSelection (or transaction Bundle) must look like to become one KOS
(app.planning.manifest_input)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.errors import InvalidRequest, Unprocessable
from app.planning.manifest_input import Author, Selected, author, from_payload

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SEL = {
    "resourceType": "ImagingSelection",
    "status": "available",
    "code": {"coding": [{"system": DCM, "code": "113005"}]},
    "subject": {"reference": "Patient/p123"},
    "studyUid": "1.2.3",
    "seriesUid": "1.2.3.4",
    "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:2.25.9"}],
    "performer": [{"actor": {"display": "Dr Who"}}],
    "extension": [{"url": "urn:x-imaging-facade:key-object-description", "valueString": " Tumour board "}],
    "instance": [
        {"uid": "1.2.3.4.5", "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}},
        {"uid": "1.2.3.4.6", "subset": ["4", "2", "2"]},
    ],
}


def test_one_resource():
    m, conditions = from_payload(SEL)
    assert conditions == [None]
    assert m.title == ("113005", "DCM", "For Conference")
    assert (m.subject, m.kos_uid, m.description, m.observer) == ("Patient/p123", "2.25.9", "Tumour board", "Dr Who")
    assert m.instances == (
        Selected("1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2"),
        Selected("1.2.3", "1.2.3.4", "1.2.3.4.6", None, (2, 4)),
    )


def test_transaction_of_two_series_agreeing():
    other = copy.deepcopy(SEL) | {"seriesUid": "1.2.3.7", "instance": [{"uid": "1.2.3.7.1"}]}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": SEL, "request": {"method": "POST", "url": "ImagingSelection", "ifNoneExist": "identifier=x"}},
            {"resource": other, "request": {"method": "POST", "url": "ImagingSelection"}},
        ],
    }
    m, conditions = from_payload(bundle)
    assert len(m.instances) == 3 and conditions == ["identifier=x", None]
    bundle["entry"][1]["resource"] = other | {"code": {"coding": [{"system": DCM, "code": "113004"}]}}
    with pytest.raises(InvalidRequest, match="must agree"):
        from_payload(bundle)
    bundle["entry"][1]["request"]["method"] = "PUT"
    with pytest.raises(InvalidRequest, match="only POST ImagingSelection"):
        from_payload(bundle)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code": {"coding": [{"system": "http://snomed.info/sct", "code": "113005"}]}}, "DCM coding"),
        ({"code": {"coding": [{"system": DCM, "code": "121000"}]}}, "CID 7010"),
        ({"instance": []}, "instance must list"),
        ({"instance": [{"uid": "1.2.03"}]}, "DICOM UID"),
        ({"instance": [{"uid": "1.2.3", "subset": ["0"]}]}, "frame numbers"),
        ({"instance": [{"uid": "1.2.3", "subset": [2]}]}, "frame numbers"),
        ({"instance": [{"uid": "1.2.3"}, {"uid": "1.2.3"}]}, "more than once"),
        ({"subject": {"reference": "Group/1"}}, "Patient"),
        ({"studyUid": "abc"}, "studyUid"),
        ({"identifier": [{"system": "urn:dicom:uid", "value": "2.25.1"}]}, "urn:oid"),
        ({"status": "entered-in-error"}, "status"),
    ],
)
def test_bad_shapes_are_400(change, error):
    with pytest.raises(InvalidRequest, match=error):
        from_payload(SEL | change)


def test_rejection_titles_are_refused_as_unprocessable():
    with pytest.raises(Unprocessable, match="rejection"):
        from_payload(SEL | {"code": {"coding": [{"system": DCM, "code": "113039"}]}})


@pytest.mark.parametrize(
    "body", [None, [], "x", {"resourceType": "Patient"}, {"resourceType": "Bundle", "type": "batch"}]
)
def test_other_bodies_are_400(body):
    with pytest.raises(InvalidRequest):
        from_payload(body)


class TestAuthor:
    """Who a manifest made through the API names as its author (TID 1002 observers): the token's fhirUser as the
    person, else the facade as the device."""

    DEVICE = "2.25.4242"

    @staticmethod
    def manifest(observer: str | None = "Dr Who") -> Any:
        m, _ = from_payload(SEL if observer else {k: v for k, v in SEL.items() if k != "performer"})
        return m

    def test_fhir_user_and_structured_name(self):
        got = author(
            self.manifest(),
            fhir_user="https://ehr.example.org/fhir/Practitioner/7",
            name="Jane Q. Roe",
            family_name="Roe",
            given_name="Jane Q.",
            device_uid=self.DEVICE,
        )
        assert got == Author("Roe^Jane Q.", "https://ehr.example.org/fhir/Practitioner/7", None)

    @pytest.mark.parametrize(
        ("claims", "observer", "name"),
        [
            ({"name": "Jane Roe"}, "Dr Who", "Jane Roe"),  # a one-component PN (PS3.5 6.2.1.2)
            ({"given_name": "Jane"}, None, "^Jane"),
            ({}, "Dr Who", "Dr Who"),  # the manifest's performer, when the token gives no name
            ({}, None, "Practitioner/7"),  # TID 1003 needs a name: the reference rather than a made-up one
            ({"name": "A^B=C\\D\x1bE"}, None, "A B C D E"),  # PN delimiters and controls cannot pass
            ({"family_name": "x" * 80}, None, "x" * 64),  # 64 characters per component group
        ],
    )
    def test_fhir_user_names(self, claims, observer, name):
        got = author(self.manifest(observer), fhir_user="Practitioner/7", device_uid=self.DEVICE, **claims)
        assert got == Author(name, "Practitioner/7", None)

    def test_without_fhir_user_the_facade_is_the_device(self):
        assert author(self.manifest(None), fhir_user=None, device_uid=self.DEVICE) == Author(None, None, self.DEVICE)
        # a person the token or the manifest names is kept beside it, but not vouched for by a reference
        assert author(self.manifest(), fhir_user=None, device_uid=self.DEVICE) == Author("Dr Who", None, self.DEVICE)
        got = author(self.manifest(), fhir_user=None, name="Jane Roe", device_uid=self.DEVICE)
        assert got == Author("Jane Roe", None, self.DEVICE)

    def test_a_device_performer_is_not_a_person(self):
        # what a read shows for a manifest made by the facade, posted back: the device is no person observer
        body = copy.deepcopy(SEL)
        body["performer"] = [{"actor": {"type": "Device", "display": "Imaging FHIR facade"}}]
        assert from_payload(body)[0].observer is None
