"""tests.support.fhir_check_r5.check_r5 must refuse a cardinality error in any R5 resource we emit (negative tests).

Issue 9 item 3: ImagingSelection.bodySite (0..1 CodeableReference(BodyStructure)) went out as a list. check_r5
itself rejects that (fhir.resources' R5 models do); it was never shown one, because the body site is added by the
I/O shell (app.usecases.manifests) after the pure mapping the unit tests check, and no API or integration test
selected a
series with a BodyPartExamined. Hence, here:

- one resource of every type we emit at /fhir/R5, built by the mapping code, passes;
- named cases: a list where the element is 0..1, a single value where it is 0..*, per type;
- every element of every one of those resources, its cardinality flipped, is refused (a new element we emit is
  covered the day a sample carries it; tests/api/test_r5_api.py does the same on real answers);
- no API or integration test talks to the app through a bare TestClient, which would skip check_r5.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from app.dicom.kos import parse_kos
from app.errors import outcome
from app.fhir import bundle
from app.http.capability import capability_statement
from app.mapping.endpoint import wado_endpoint
from app.mapping.imaging_selection import imaging_selections
from app.mapping.imaging_study import MappingContext, imaging_study
from app.mapping.patient import patient
from app.mapping.r5 import bundle_r5, endpoint_r5, imaging_study_r5, patient_r5
from app.mapping.versions import R5
from app.settings import Settings
from tests.api.conftest import instance_row, study_row
from tests.support.fhir_check_r5 import FhirCheckError, cardinality_flips, check_r5
from tests.support.kos import FOR_TEACHING, kos_json, make_kos, make_study

BASE = "https://fhir.example.org/fhir/R5"
SNOMED = "http://snomed.info/sct"
CTX = MappingContext(accession_system="http://hospital-a.example.org/acc", zone=ZoneInfo("Europe/Berlin"))
TESTS = Path(__file__).resolve().parents[1]
# What app.usecases.manifests adds to a selection of a series whose BodyPartExamined is KNEE (PS3.16 Annex L).
KNEE = {"concept": {"coding": [{"system": SNOMED, "code": "72696002", "display": "Knee"}], "text": "KNEE"}}


def _study_r4() -> dict[str, Any]:
    row = study_row("2.25.7", issuer="HOSP-A", offset="+0100")
    rows = [
        instance_row("2.25.7", "2.25.7.1", "2.25.7.1.1", body_part="KNEE", laterality="L"),
        instance_row("2.25.7", "2.25.7.1", "2.25.7.1.2", body_part="KNEE", laterality="L", number=2),
        instance_row("2.25.7", "2.25.7.2", "2.25.7.2.1", body_part="SPLEENISH", series_number=2),
    ]
    return imaging_study(row, rows, CTX)


def _study() -> dict[str, Any]:
    return imaging_study_r5(_study_r4())


def _selection() -> dict[str, Any]:
    images = make_study(9, "check-r5", patient_id="P1", patient_name="Doe^Jane", issuer="HOSP-A")
    kos = make_kos(images, title=FOR_TEACHING, description="Key images", observer_name="Roe^Rick", seed=9)
    (selection,) = imaging_selections(parse_kos(kos_json(kos)), CTX)
    return selection | {"bodySite": KNEE}


def _patient_r4() -> dict[str, Any]:
    row = study_row("2.25.7", issuer="HOSP-A") | {
        "00100030": {"vr": "DA", "Value": ["19580214"]},
        "00100040": {"vr": "CS", "Value": ["F"]},
    }
    return patient(row, CTX)


def _endpoint_r4() -> dict[str, Any]:
    return wado_endpoint("wado-rs", "http://pacs.example.org/dicom-web", requires_token=True)


def _patient() -> dict[str, Any]:
    return patient_r5(_patient_r4())


def _endpoint() -> dict[str, Any]:
    return endpoint_r5(_endpoint_r4())


def _bundle() -> dict[str, Any]:
    return bundle_r5(
        bundle.searchset(
            BASE,
            [_study_r4()],
            self_url=f"{BASE}/ImagingStudy?_count=1",
            next_url=f"{BASE}/ImagingStudy?_count=1&_offset=1",
            previous_url=f"{BASE}/ImagingStudy?_count=1&_offset=0",
            included=[_endpoint_r4(), _patient_r4()],
            total=3,
        )
    )


def _selection_bundle() -> dict[str, Any]:
    return bundle.searchset(BASE, [_selection()], self_url=f"{BASE}/ImagingSelection?patient=Patient/x", total=1)


def _capability_statement() -> dict[str, Any]:
    settings = Settings(auth_mode="open", dicomweb_url="http://pacs.example.org/dicom-web")
    return capability_statement(BASE, R5, settings, software_version="0.1.0", date="2024-03-01")


SAMPLES = {
    "ImagingStudy": _study,
    "ImagingSelection": _selection,
    "Patient": _patient,
    "Endpoint": _endpoint,
    "Bundle": _bundle,
    "Bundle of ImagingSelection": _selection_bundle,
    "OperationOutcome": lambda: outcome("not-found", "No such study"),
    "CapabilityStatement": _capability_statement,
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_what_we_emit_passes(name: str) -> None:
    check_r5(SAMPLES[name]())


def _set(resource: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    parent: Any = resource
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        parent = parent[key]
    parent[keys[-1]] = value(parent[keys[-1]])
    return resource


def _listed(v: Any) -> list[Any]:
    return [v]


def _unlisted(v: list[Any]) -> Any:
    return v[0]


@pytest.mark.parametrize(
    ("name", "path", "change"),
    [
        # A list where the element is 0..1 (or 1..1).
        ("ImagingSelection", "bodySite", _listed),  # the bug of issue 9 item 3
        ("ImagingSelection", "code", _listed),
        ("ImagingSelection", "subject", _listed),
        ("ImagingSelection", "issued", _listed),
        ("ImagingSelection", "studyUid", _listed),
        ("ImagingSelection", "seriesUid", _listed),
        ("Bundle of ImagingSelection", "entry.0.resource.bodySite", _listed),
        ("ImagingStudy", "started", _listed),
        ("ImagingStudy", "subject", _listed),
        ("ImagingStudy", "status", _listed),
        ("ImagingStudy", "numberOfSeries", _listed),
        ("ImagingStudy", "series.0.bodySite", _listed),
        ("ImagingStudy", "series.0.laterality", _listed),
        ("ImagingStudy", "series.0.modality", _listed),
        ("ImagingStudy", "series.0.instance.0.sopClass", _listed),
        ("Endpoint", "address", _listed),
        ("Endpoint", "status", _listed),
        ("Endpoint", "name", _listed),
        ("Patient", "gender", _listed),
        ("Patient", "birthDate", _listed),
        ("Patient", "identifier.0.system", _listed),
        ("Patient", "identifier.0.type", _listed),
        ("Bundle", "type", _listed),
        ("Bundle", "total", _listed),
        ("Bundle", "link.0.url", _listed),
        ("Bundle", "entry.0.fullUrl", _listed),
        ("Bundle", "entry.0.search", _listed),
        ("Bundle", "entry.0.resource", _listed),
        # A single value where the element is 0..* (or 1..*).
        ("ImagingSelection", "instance", _unlisted),
        ("ImagingSelection", "derivedFrom", _unlisted),
        ("ImagingStudy", "identifier", _unlisted),
        ("ImagingStudy", "modality", _unlisted),
        ("ImagingStudy", "series", _unlisted),
        ("ImagingStudy", "series.0.bodySite.concept.coding", _unlisted),
        ("Endpoint", "connectionType", _unlisted),
        ("Endpoint", "payload.0.mimeType", _unlisted),
        ("Patient", "name", _unlisted),
        ("Patient", "identifier", _unlisted),
        ("Bundle", "link", _unlisted),
        ("Bundle", "entry", _unlisted),
    ],
)
def test_a_cardinality_error_is_refused(name: str, path: str, change: Any) -> None:
    bad = _set(SAMPLES[name](), path, change)
    with pytest.raises(FhirCheckError):
        check_r5(bad)


def test_a_list_body_site_on_imaging_selection_is_refused_naming_it() -> None:
    with pytest.raises(FhirCheckError, match=r"bodySite"):
        check_r5(_selection() | {"bodySite": [KNEE]})


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_element_with_its_cardinality_flipped_is_refused(name: str) -> None:
    sample = SAMPLES[name]()
    missed = []
    count = 0
    for path, bad in cardinality_flips(sample):
        count += 1
        try:
            check_r5(bad)
        except FhirCheckError:
            continue
        missed.append(path)
    assert count >= 3 and missed == []


def test_the_samples_carry_the_elements_that_escaped_before() -> None:
    # The flip test proves nothing about an element no sample carries.
    assert "bodySite" in _selection() and "laterality" in _study()["series"][0]
    assert {"next", "previous"} <= {link["relation"] for link in _bundle()["link"]}


def test_no_api_or_integration_test_uses_a_bare_test_client() -> None:
    """A TestClient made directly skips check/check_r5; tests.support.fhir_check.checking_client checks every
    FHIR body (R5 under /fhir/R5), so tests use that (raise_server_exceptions and the like pass through). A test
    that must not pay for the checks says so with an ``# unchecked: <why>`` comment on the line or the three above."""
    bare = []
    for folder in ("api", "integration"):
        for path in sorted((TESTS / folder).glob("*.py")):
            source = path.read_text(encoding="utf-8")
            lines = source.splitlines()
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                    near = lines[max(0, node.lineno - 4) : node.lineno]
                    if name == "TestClient" and not any("# unchecked:" in line for line in near):
                        bare.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert bare == [], "use checking_client(app, ...) instead of TestClient(app, ...): " + ", ".join(bare)
