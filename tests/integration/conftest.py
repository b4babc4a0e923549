"""Integration tests run against a private Orthanc + DICOMweb plugin, started once per session.

Every test in this package is skipped when Orthanc or its DICOMweb plugin is not installed
(``apt-get install orthanc orthanc-dicomweb``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydicom import Dataset

from tests.support.dataset import Manifest, build_dataset
from tests.support.federation import Federation, start_federation
from tests.support.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, store


@dataclass(frozen=True)
class OrthancFixture:
    """What the session's Orthanc holds: ``build_dataset()`` stored through STOW-RS."""

    url: str  # Orthanc REST root, http://127.0.0.1:PORT
    dicomweb_url: str  # url + "/dicom-web", no trailing slash
    manifest: Manifest
    datasets: list[Dataset]
    server: OrthancServer
    load_seconds: float  # time to generate and store the dataset


def _missing_orthanc() -> str | None:
    reason = None
    if orthanc_binary() is None:
        reason = "Orthanc is not installed (apt-get install orthanc)"
    elif dicomweb_plugin() is None:
        reason = "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    if reason and os.environ.get("FACADE_TESTS_REQUIRE_ORTHANC") == "1":
        # CI sets this, so a missing install step fails the run instead of skipping the real-PACS tests.
        pytest.fail(reason, pytrace=False)
    return reason


@pytest.fixture(autouse=True)
def _require_orthanc() -> None:
    # Autouse, so tests that do not ask for the `orthanc` fixture are skipped too.
    reason = _missing_orthanc()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def orthanc() -> Iterator[OrthancFixture]:
    reason = _missing_orthanc()
    if reason is not None:
        pytest.skip(reason)
    with OrthancServer() as server:
        started = time.perf_counter()
        datasets, manifest = build_dataset()
        store(server.dicomweb_url, datasets)
        yield OrthancFixture(
            url=server.url,
            dicomweb_url=server.dicomweb_url,
            manifest=manifest,
            datasets=datasets,
            server=server,
            load_seconds=time.perf_counter() - started,
        )


@pytest.fixture(scope="session")
def federation() -> Iterator[Federation]:
    """Three private Orthancs, "north", "south" and "east" (issuers NORTH, SOUTH, EAST), each holding its part of
    ``build_federation_data()`` (tests.support.federation: what is where, and the unions to expect)."""
    reason = _missing_orthanc()
    if reason is not None:
        pytest.skip(reason)
    with start_federation() as running:
        yield running
