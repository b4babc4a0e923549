"""The test suite's own validator must catch what fhir.resources lets through (negative tests)."""

from __future__ import annotations

import pytest

from tests.support.fhir_check import FhirCheckError, _google_r4, check

GOOD = {
    "resourceType": "ImagingStudy",
    "id": "1.2.3",
    "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}],
    "status": "available",
    "subject": {"reference": "Patient/p1"},
    "started": "2020-01-02T10:15:00+01:00",
}


def test_a_good_study_passes():
    check(GOOD)


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"status": "bogus"}, "status outside the required value set"),
        ({"started": "2020-01-02T10:15:00"}, "dateTime with a time but no zone"),
        ({"numberOfSeries": -1}, "negative unsignedInt"),
        ({"id": "not an id!"}, "id with forbidden characters"),
        ({"series": [{"uid": "1.2", "modality": {"code": "CT"}, "instance": [{"uid": "1.2.3"}]}]}, "sopClass 1..1"),
    ],
)
def test_google_fhir_r4_rejects_what_fhir_resources_accepts(change, what):
    bad = GOOD | change
    with pytest.raises(FhirCheckError, match="google-fhir-r4"):
        _google_r4(bad)


def test_bad_bundle_type_and_search_mode():
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"fullUrl": "http://x/fhir/R4/ImagingStudy/1.2.3", "resource": GOOD, "search": {"mode": "sideways"}}],
    }
    with pytest.raises(FhirCheckError):
        check(bundle)
    with pytest.raises(FhirCheckError):
        _google_r4(bundle | {"type": "pile"})
