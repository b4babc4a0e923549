"""Operations surface: request ids, Prometheus metrics by route template, the audit line, readiness, JSON logs."""

from __future__ import annotations

import json
import logging

import httpx

from app.http.observability import JsonFormatter
from tests.api.conftest import PACS, instance_row, study_row


def _pacs(pacs):
    row = study_row("1.2.3", patient_id="MRN1", name="Secret^Name")
    row["00100030"] = {"vr": "DA", "Value": ["19700101"]}
    pacs.get(url__regex=rf"^{PACS}/studies").mock(return_value=httpx.Response(200, json=[row]))
    pacs.get(url__regex=rf"^{PACS}/instances").mock(
        return_value=httpx.Response(200, json=[instance_row("1.2.3", "1.2.3.1", "1.2.3.1.1")])
    )


def test_request_id_is_echoed_when_harmless_and_made_otherwise(pacs, client):
    _pacs(pacs)
    r = client.get("/fhir/R4/ImagingStudy/1.2.3", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/fhir/R4/ImagingStudy/1.2.3", headers={"X-Request-ID": "bad id\\u0000" * 10})
    assert len(r.headers["x-request-id"]) == 32 and r.headers["x-request-id"].isalnum()
    assert client.get("/nope").headers["x-request-id"]


def test_metrics_by_route_template_with_cache_series(pacs, client):
    _pacs(pacs)
    for _ in range(2):
        client.get("/fhir/R4/ImagingStudy/1.2.3")
    client.get("/fhir/R4/ImagingStudy/9.9.9")
    text = client.get("/metrics").text
    assert 'facade_http_requests_total{method="GET",route="/fhir/R4/ImagingStudy/{id}",status="200"} 2.0' in text
    assert 'status="404"' in text and "1.2.3" not in text and "9.9.9" not in text
    assert "facade_cache_hits" in text and "facade_cache_bytes" in text
    assert "facade_http_request_seconds_bucket" in text


def _gauge(text: str, name: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


def test_metrics_count_finished_answer_hits_apart_from_qido_hits(pacs, client):
    """A repeat served from the answer cache never reaches the QIDO cache: /metrics must still show it."""
    _pacs(pacs)
    for _ in range(3):
        assert client.get("/fhir/R4/ImagingStudy/1.2.3").status_code == 200
    text = client.get("/metrics").text
    assert (_gauge(text, "facade_answer_cache_hits"), _gauge(text, "facade_answer_cache_misses")) == (2.0, 1.0)
    assert _gauge(text, "facade_answer_cache_bytes") > 0
    client.get("/fhir/R4/ImagingStudy/1.2.3", headers={"Cache-Control": "no-cache"})
    assert _gauge(client.get("/metrics").text, "facade_answer_cache_hits") == 2.0


def test_audit_line_names_resources_and_patients_but_no_names_or_dates(pacs, client, caplog):
    _pacs(pacs)
    with caplog.at_level(logging.INFO, logger="facade.audit"):
        client.get("/fhir/R4/ImagingStudy?patient.identifier=MRN1&_include=ImagingStudy:patient")
    (rec,) = [r for r in caplog.records if r.name == "facade.audit"]
    audit = rec.audit  # type: ignore[attr-defined]
    assert audit["status"] == 200 and audit["interaction"] == "search" and audit["type"] == "ImagingStudy"
    assert "ImagingStudy/1.2.3" in audit["resources"] and audit["patients"]
    line = JsonFormatter().format(rec)
    assert "Secret" not in line and "1970" not in line and json.loads(line)["route"] == "/fhir/R4/ImagingStudy"


def test_readyz_follows_the_pacs(pacs, client):
    route = pacs.get(url__regex=rf"^{PACS}/studies").mock(return_value=httpx.Response(200, json=[]))
    assert client.get("/readyz").status_code == 200
    route.mock(side_effect=httpx.ConnectError("refused"))
    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["resourceType"] == "OperationOutcome"
    assert "pacs.test" not in r.text
    assert client.get("/healthz").status_code == 200  # alive, even when not ready


def test_json_formatter_carries_the_request_id():
    record = logging.LogRecord("app", logging.WARNING, __file__, 1, "hello %s", ("x",), None)
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "hello x" and out["level"] == "warning" and out["request_id"] == "-"
