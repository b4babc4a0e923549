"""Two facade containers behind one Redis container (issue 23, item 5; compose.yaml profile "replicas"), in smart
mode with capability URLs for viewers: a manifest created through one replica is in the very next search through
the other, and a capability URL issued by one is honoured by the other (they share the capability keys, read from
a mounted file as container platforms mount secrets: FACADE_CAPABILITY_KEYS_FILE)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.container.conftest import P1, P2, Pacs
from tests.support.containers import REDIS_IMAGE, Container, Facade, listening, start_facade
from tests.support.facade import free_port
from tests.support.tokens import AUDIENCE, ISSUER, TokenIssuer

pytestmark = pytest.mark.container
KEYS = TokenIssuer()
CAPABILITY_KEYS = "replica-key-" + "r" * 40
DCM = "http://dicom.nema.org/resources/ontology/DCM"
MANIFESTS = "patient/ImagingStudy.rs patient/ImagingSelection.rs patient/ImagingSelection.c"


@pytest.fixture(scope="module")
def redis() -> Iterator[tuple[Container, int]]:
    port = free_port()
    with Container(REDIS_IMAGE, "--port", str(port)) as server:
        deadline = time.monotonic() + 30
        while server.exec("redis-cli", "-p", str(port), "ping").stdout.strip() != "PONG":
            assert server.running() and time.monotonic() < deadline, server.logs()
            time.sleep(0.2)
        yield server, port


@pytest.fixture(scope="module")
def replicas(pacs: Pacs, redis: tuple[Container, int], tmp_path_factory) -> Iterator[tuple[Facade, Facade]]:
    keys: Path = tmp_path_factory.mktemp("keys")
    KEYS.write_jwks(keys).chmod(0o644)
    # The capability keys as a container platform mounts a secret: a file, named by FACADE_CAPABILITY_KEYS_FILE.
    (keys / "capability_keys").write_text(CAPABILITY_KEYS + "\n", encoding="utf-8")
    (keys / "capability_keys").chmod(0o644)
    keys.chmod(0o755)  # the service runs as uid 10001 in the container
    env = {
        "FACADE_CACHE_REDIS_URL": f"redis://127.0.0.1:{redis[1]}/0",
        "FACADE_AUTH_MODE": "smart",
        "FACADE_JWKS_FILE": "/run/keys/jwks.json",
        "FACADE_TOKEN_ISSUER": ISSUER,
        "FACADE_TOKEN_AUDIENCE": AUDIENCE,
        "FACADE_WADO_ACCESS": "capability",
        "FACADE_CAPABILITY_KEYS_FILE": "/run/keys/capability_keys",
    }
    volumes = [f"{keys}:/run/keys:ro"]
    first = start_facade(pacs.dicomweb_url, env=env, volumes=volumes)
    try:
        second = start_facade(pacs.dicomweb_url, env=env, volumes=volumes)
        try:
            yield first, second
        finally:
            second.container.stop()
    finally:
        first.container.stop()


def test_a_manifest_created_through_one_replica_is_in_the_next_search_through_the_other(pacs, redis, replicas):
    one, other = replicas
    headers = KEYS.headers(MANIFESTS, P1)
    study = pacs.p1_studies[0]
    uid = str(study[0].StudyInstanceUID)
    selections = f"/fhir/R5/ImagingSelection?patient=Patient/{P1}"
    read = f"/fhir/R4/ImagingStudy/{uid}"
    # Both replicas have the current answers (in Redis) before the write.
    for replica in (one, other):
        assert httpx.get(replica.root + selections, headers=headers).json().get("entry", []) == []
        assert httpx.get(replica.root + read, headers=headers).json()["numberOfSeries"] == 1
    server, port = redis
    assert listening(port) == {"127.0.0.1"}
    keys = server.exec("redis-cli", "-p", str(port), "--scan", "--pattern", "facade:*").stdout.split()
    assert keys, "the replicas keep nothing in Redis"
    body = {
        "resourceType": "ImagingSelection",
        "status": "available",
        "code": {"coding": [{"system": DCM, "code": "113004"}]},
        "studyUid": uid,
        "seriesUid": str(study[0].SeriesInstanceUID),
        "instance": [{"uid": str(study[1].SOPInstanceUID)}],
    }
    r = httpx.post(
        f"{one.root}/fhir/R5/ImagingSelection",
        content=json.dumps(body),
        headers={"content-type": "application/fhir+json", **headers},
    )
    assert r.status_code == 201, r.text
    # At once, through the other replica: no waiting for a cache entry to expire.
    found = httpx.get(other.root + selections, headers=headers).json()["entry"]
    assert [e["resource"]["id"] for e in found] == [r.json()["id"]]
    assert httpx.get(other.root + read, headers=headers).json()["numberOfSeries"] == 2  # plus the KO series


def test_a_capability_issued_by_one_replica_is_honoured_by_the_other(pacs, replicas):
    one, other = replicas
    study = pacs.p2_study
    uid = str(study[0].StudyInstanceUID)
    r = httpx.get(
        f"{one.base}/ImagingStudy",
        params={"_id": uid, "_include": "ImagingStudy:endpoint"},
        headers=KEYS.headers("patient/ImagingStudy.rs", P2),
    )
    assert r.status_code == 200, r.text
    (imaging_study,) = [e["resource"] for e in r.json()["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
    (endpoint,) = [c for c in imaging_study.get("contained", []) if c["resourceType"] == "Endpoint"]
    address: str = endpoint["address"]
    assert address.startswith(f"{one.root}/dicomweb/c/")
    elsewhere = address.replace(one.root, other.root, 1)
    metadata = httpx.get(f"{elsewhere}/studies/{uid}/metadata", headers={"accept": "application/dicom+json"})
    assert metadata.status_code == 200, metadata.text  # no token: the URL is the permission, on either replica
    instances = {item["00080018"]["Value"][0] for item in metadata.json()}
    assert instances >= {str(ds.SOPInstanceUID) for ds in study}  # (and any manifest made in other tests)
    # Without the capability the other replica refuses, and the capability does not open another study.
    assert httpx.get(f"{other.root}/dicomweb/studies/{uid}/metadata").status_code == 401
    p1_uid = str(pacs.p1_studies[1][0].StudyInstanceUID)
    assert httpx.get(f"{elsewhere}/studies/{p1_uid}/metadata").status_code in (401, 403, 404)
