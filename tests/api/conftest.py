"""API tests: the real app through TestClient, the PACS replaced by an httpx mock transport (respx router)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.support.fhir_check import checking_client

PACS = "http://pacs.test:8042/dicom-web"


def study_row(
    uid: str,
    *,
    patient_id: str = "MRN1",
    issuer: str | None = None,
    name: str = "Doe^Jane",
    date: str = "20200102",
    time: str | None = "101500",
    offset: str | None = None,
    modalities: tuple[str, ...] = ("CT",),
    accession: str | None = "ACC1",
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00100020": {"vr": "LO", "Value": [patient_id]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
        "00080020": {"vr": "DA", "Value": [date]},
        "00080061": {"vr": "CS", "Value": list(modalities)},
        "00201206": {"vr": "IS", "Value": [1]},
        "00201208": {"vr": "IS", "Value": [1]},
        "00081030": {"vr": "LO"},
    }
    if time:
        row["00080030"] = {"vr": "TM", "Value": [time]}
    if issuer:
        row["00100021"] = {"vr": "LO", "Value": [issuer]}
    if offset:
        row["00080201"] = {"vr": "SH", "Value": [offset]}
    if accession:
        row["00080050"] = {"vr": "SH", "Value": [accession]}
    return row


def instance_row(
    study: str,
    series: str,
    sop: str,
    *,
    modality: str = "CT",
    number: int = 1,
    series_number: int = 1,
    body_part: str | None = "CHEST",
    laterality: str | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "0020000D": {"vr": "UI", "Value": [study]},
        "0020000E": {"vr": "UI", "Value": [series]},
        "00080018": {"vr": "UI", "Value": [sop]},
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00080060": {"vr": "CS", "Value": [modality]},
        "00200011": {"vr": "IS", "Value": [series_number]},
        "00200013": {"vr": "IS", "Value": [number]},
    }
    if body_part:
        row["00180015"] = {"vr": "CS", "Value": [body_part]}
    if laterality:
        row["00200060"] = {"vr": "CS", "Value": [laterality]}
    return row


def settings(**overrides: Any) -> Settings:
    return Settings(**({"dicomweb_url": PACS, "cache_ttl": 60.0, "auth_mode": "open"} | overrides))


@pytest.fixture
def pacs() -> respx.MockRouter:
    return respx.MockRouter(assert_all_called=False)


@pytest.fixture
def make_client(pacs: respx.MockRouter) -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        app = create_app(settings(**overrides), transport=httpx.MockTransport(pacs.handler))
        client = checking_client(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Any) -> TestClient:
    return make_client()  # type: ignore[no-any-return]
