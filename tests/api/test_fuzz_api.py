"""Property test: no query string makes the facade answer 5xx, and every error is an OperationOutcome.

The PACS is mocked to answer empty results, so what is exercised is parsing, planning and QIDO building
(which asserts that only safe characters reach the PACS).
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

from app.fhir.search_params import IMAGING_STUDY_PARAMS, PATIENT_PARAMS  # noqa: E402
from tests.api.conftest import PACS  # noqa: E402

NAMES = [p.name for p in IMAGING_STUDY_PARAMS + PATIENT_PARAMS] + [
    "_count",
    "_offset",
    "_include",
    "_format",
    "_pretty",
    "_total",
    "_sort",
    "patient.identifier",
    "patient:identifier",
    "subject:Patient.identifier",
    "identifier:exact",
    "started:missing",
    "referrer.name:exact",
    "name:contains",
    "given:exact",
    "gender:not",
    "birthdate:missing",
    "foo",
]
ALPHABET = st.sampled_from([*list("AZaz09.-_:/|,\\*?^%&=+ #'\"<>ü山\x00"), "urn:oid:", "ge", "2020-01-01", "T10:00"])
VALUES = st.lists(ALPHABET, max_size=12).map("".join)


@hypothesis.settings(
    max_examples=300, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)
@hypothesis.given(
    resource=st.sampled_from(["ImagingStudy", "Patient"]),
    params=st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=4),
    strict=st.booleans(),
)
def test_no_query_string_causes_a_server_error(pacs, client, resource, params, strict):
    pacs.get(url__startswith=PACS).mock(return_value=httpx.Response(200, json=[]))
    query = "&".join(f"{quote(k, safe=':.')}={quote(v, safe='')}" for k, v in params)
    headers = {"prefer": "handling=strict"} if strict else {}
    r = client.get(f"/fhir/R4/{resource}?{query}", headers=headers)
    assert r.status_code < 500, (query, r.text)
    body = r.json()
    assert body["resourceType"] == ("Bundle" if r.status_code == 200 else "OperationOutcome"), (query, r.text)


@hypothesis.settings(
    max_examples=150, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)
@hypothesis.given(resource=st.sampled_from(["ImagingStudy", "Patient", "Endpoint"]), rid=VALUES, form=VALUES)
def test_no_id_or_form_causes_a_server_error(pacs, client, resource, rid, form):
    pacs.get(url__startswith=PACS).mock(return_value=httpx.Response(200, json=[]))
    r = client.get(f"/fhir/R4/{resource}/{quote(rid, safe='')}")
    assert r.status_code < 500 and r.json()["resourceType"] in (resource, "OperationOutcome", "Bundle"), r.text
    r = client.post(
        f"/fhir/R4/{'Patient' if resource == 'Patient' else 'ImagingStudy'}/_search",
        content=form.encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code < 500 and r.json()["resourceType"] in ("Bundle", "OperationOutcome"), r.text
