"""Container tests: the images ``bash scripts/images`` builds, run as a hospital would run them.

The Orthanc image holds the test studies, the facade image serves in front of it (``docker run --network host``,
free ports on 127.0.0.1), and the tests talk to the facade container only, with real clients. Every container is
stopped and removed by its id. Skipped when no Docker engine answers or an image is missing, unless
FACADE_TESTS_REQUIRE_DOCKER=1 (scripts/container-tests), which makes that a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydicom import Dataset

from app.fhir import patient_ids
from tests.support.containers import ORTHANC_IMAGE, Container, Facade, engine_problem, start_facade
from tests.support.facade import free_port
from tests.support.kos import make_study
from tests.support.orthanc import store

# Patient P1 has five one-series studies (paging), P2 one study of two series (retrieve, manifests).
P1_ID, P2_ID = "CONT0001", "CONT0002"
P1, P2 = patient_ids.encode(P1_ID, None), patient_ids.encode(P2_ID, None)


def _missing_docker() -> str | None:
    reason = engine_problem()
    if reason and os.environ.get("FACADE_TESTS_REQUIRE_DOCKER") == "1":
        pytest.fail(reason, pytrace=False)
    return reason


@pytest.fixture(autouse=True, scope="session")
def _require_docker() -> None:
    reason = _missing_docker()
    if reason is not None:
        pytest.skip(reason)


@dataclass(frozen=True)
class Pacs:
    container: Container
    port: int
    p1_studies: list[list[Dataset]]
    p2_study: list[Dataset]

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    @property
    def p1_uids(self) -> set[str]:
        return {str(study[0].StudyInstanceUID) for study in self.p1_studies}


@pytest.fixture(scope="session")
def pacs() -> Iterator[Pacs]:
    """The Orthanc image on a free port, holding P1's five studies and P2's one (stored through STOW-RS)."""
    p1 = [
        make_study(23, f"p1-{i}", patient_id=P1_ID, patient_name="Kessler^Clara", study_date=f"2024010{i}")
        for i in range(1, 6)
    ]
    p2 = make_study(23, "p2", patient_id=P2_ID, patient_name="Kessler^Carl", series_sizes=(2, 1), modality="MR")
    port = free_port()
    with Container(ORTHANC_IMAGE, env={"ORTHANC_HTTP_PORT": str(port)}) as orthanc:
        orthanc.wait_http(f"http://127.0.0.1:{port}/system")
        store(f"http://127.0.0.1:{port}/dicom-web", [ds for study in [*p1, p2] for ds in study])
        yield Pacs(orthanc, port, p1, p2)


@pytest.fixture(scope="session")
def facade(pacs: Pacs) -> Iterator[Facade]:
    """One facade container in open mode in front of the Orthanc container (WADO-RS through its gateway)."""
    served = start_facade(pacs.dicomweb_url, options=["--health-interval", "1s"])
    try:
        yield served
    finally:
        served.container.stop()
