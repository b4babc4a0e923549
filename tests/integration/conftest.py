"""Integration tests run against a private Orthanc + DICOMweb plugin, started once per session.

Every test in this package is skipped when Orthanc or its DICOMweb plugin is not installed
(``apt-get install orthanc orthanc-dicomweb``).

FACADE_TEST_ORTHANC_URL=http://127.0.0.1:8042/dicom-web names an Orthanc someone else started (the Orthanc image,
docs/containers.md): the session's ``orthanc`` fixture then loads ``build_dataset()`` into it instead of starting
one, and the tests that use only that fixture run without a local Orthanc install. It must hold nothing else (the
tests count every study), be Orthanc (its REST API, the DICOMweb URL without ``/dicom-web``, is read too) and
have the settings of tests.support.orthanc.base_config. Modules that start Orthancs of their own (a module
fixture, or an ``orthanc`` fixture of their own) keep doing so: they stop, restart or reconfigure them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from pydicom import Dataset

from tests.support.dataset import Manifest, build_dataset
from tests.support.federation import Federation, start_federation
from tests.support.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, store

EXTERNAL_ORTHANC = "FACADE_TEST_ORTHANC_URL"


@dataclass(frozen=True)
class OrthancFixture:
    """What the session's Orthanc holds: ``build_dataset()`` stored through STOW-RS."""

    url: str  # Orthanc REST root, http://127.0.0.1:PORT
    dicomweb_url: str  # url + "/dicom-web", no trailing slash
    manifest: Manifest
    datasets: list[Dataset]
    server: OrthancServer | None  # None: FACADE_TEST_ORTHANC_URL's Orthanc, not ours
    load_seconds: float  # time to generate and store the dataset


def external_orthanc() -> str | None:
    """FACADE_TEST_ORTHANC_URL without a trailing slash, or None."""
    return os.environ.get(EXTERNAL_ORTHANC, "").strip().rstrip("/") or None


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
def _require_orthanc(request: pytest.FixtureRequest) -> None:
    # Autouse, so tests that do not ask for the `orthanc` fixture are skipped too.
    # A test served by the external Orthanc needs no local install (a module with an `orthanc` fixture of its own
    # starts a private one, as before).
    if external_orthanc() and "orthanc" in request.fixturenames and not hasattr(request.module, "orthanc"):
        return
    reason = _missing_orthanc()
    if reason is not None:
        pytest.skip(reason)


def _external(dicomweb_url: str) -> OrthancFixture:
    started = time.perf_counter()
    datasets, manifest = build_dataset()
    store(dicomweb_url, datasets)
    held = httpx.get(f"{dicomweb_url}/studies", params={"includefield": "0020000D"}, timeout=60)
    held.raise_for_status()
    extra = {row["0020000D"]["Value"][0] for row in held.json()} - {s.study_uid for s in manifest.studies}
    if extra:
        pytest.fail(f"{EXTERNAL_ORTHANC} holds {len(extra)} studies besides the test data: use an empty Orthanc")
    return OrthancFixture(
        url=dicomweb_url.rsplit("/", 1)[0],
        dicomweb_url=dicomweb_url,
        manifest=manifest,
        datasets=datasets,
        server=None,
        load_seconds=time.perf_counter() - started,
    )


@pytest.fixture(scope="session")
def orthanc() -> Iterator[OrthancFixture]:
    url = external_orthanc()
    if url is not None:
        yield _external(url)
        return
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
