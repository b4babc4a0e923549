"""``_lastUpdated`` and ``meta.lastUpdated`` on live Orthancs beyond one PACS's studies (issue 22).

Key-image manifests: three KOS stored into three studies seconds apart are found as R5 ImagingSelections and R4
DocumentReferences by ``_lastUpdated`` with every prefix (gt lt ge le eq ne sa eb ap), followed page by page at
``_count=1`` and counted, against Orthanc's own ``LastUpdate`` of the study each KOS is stored in
(``GET /studies/{id}``). Several archives: a study held by two Orthancs changed when the later one says; one
archive that is not an Orthanc refuses the parameter by name.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydicom import Dataset
from starlette.testclient import TestClient

from app.fhir import patient_ids
from app.main import create_app
from app.settings import Settings
from app.source_settings import SourceSettings
from tests.support.fhir_check import checking_client
from tests.support.kos import FOR_CONFERENCE, FOR_REFERRING_PROVIDER, FOR_TEACHING, make_kos, make_study
from tests.support.orthanc import OrthancServer, store

pytestmark = pytest.mark.integration
R4, R5 = "/fhir/R4", "/fhir/R5"
A = patient_ids.encode("LU-A", None)
APART = 3.0  # seconds between the stores: Orthanc's LastUpdate counts seconds


def last_update(orthanc_url: str, study_uid: str) -> str:
    """Orthanc's own word: the study's ``LastUpdate`` from ``GET /studies/{id}``."""
    (found,) = [f for f in httpx.post(f"{orthanc_url}/tools/lookup", content=study_uid).json() if f["Type"] == "Study"]
    return str(httpx.get(f"{orthanc_url}/studies/{found['ID']}").json()["LastUpdate"])


def seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC).timestamp()


def instant(stamp: str) -> str:
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S").strftime("%Y-%m-%dT%H:%M:%SZ")


def matching(prefix: str, pivot: str, now: float) -> Callable[[str], bool]:
    """R4 search.html#prefix on the second a LastUpdate names against the second ``pivot`` names; ``ap``: that
    second widened by 10 % of its distance to ``now`` on each side (the server's stated tolerance)."""
    p = seconds(pivot)
    slack = abs(now - p) / 10

    def check(stamp: str) -> bool:
        t = seconds(stamp)
        return {
            "eq": t == p,
            "ne": t != p,
            "gt": t > p,
            "ge": t >= p,
            "lt": t < p,
            "le": t <= p,
            "sa": t >= p + 1,
            "eb": t + 1 <= p,
            "ap": t < p + 1 + slack and t + 1 > p - slack,
        }[prefix]

    return check


def every_page(client: TestClient, url: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        r = client.get(next_url)
        assert r.status_code == 200, r.text
        bundle = r.json()
        seen += [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        next_url = next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)
    return seen


def kos_uid(resource: dict[str, Any]) -> str:
    """The KOS a DocumentReference or ImagingSelection shows."""
    value = resource["masterIdentifier"] if "masterIdentifier" in resource else resource["identifier"][0]
    return str(value["value"]).removeprefix("urn:oid:")


# -- one Orthanc: the manifests -----------------------------------------------------------------------------------


@dataclass
class Manifests:
    server: OrthancServer
    kos: dict[str, Dataset]  # name → KOS, stored APART seconds after the one before
    home: dict[str, str]  # KOS SOP Instance UID → Orthanc's LastUpdate of the study it is stored in


@pytest.fixture(scope="module")
def manifests() -> Iterator[Manifests]:
    ct = make_study(61, "ct", patient_id="LU-A", patient_name="Doe^Jane", series_sizes=(2,))
    mr = make_study(61, "mr", patient_id="LU-A", patient_name="Doe^Jane", modality="MR", study_date="20240210")
    other = make_study(61, "b", patient_id="LU-B", patient_name="Roe^Rick")
    kos = {
        "teaching": make_kos(ct, title=FOR_TEACHING, seed=61),  # stored in the CT study, first
        "conference": make_kos(mr[:1], title=FOR_CONFERENCE, seed=62),  # in the MR study, APART s later
        "referring": make_kos(other, title=FOR_REFERRING_PROVIDER, seed=63),  # in B's study, last
    }
    with OrthancServer() as server:
        store(server.dicomweb_url, [*ct, *mr, *other, kos["teaching"]])
        for name in ("conference", "referring"):
            time.sleep(APART)
            store(server.dicomweb_url, [kos[name]])
        home = {str(k.SOPInstanceUID): last_update(server.url, str(k.StudyInstanceUID)) for k in kos.values()}
        yield Manifests(server, kos, home)


@pytest.fixture(scope="module")
def facade(manifests: Manifests) -> Iterator[TestClient]:
    settings = Settings(dicomweb_url=manifests.server.dicomweb_url, auth_mode="open", pacs_kind="orthanc")
    with checking_client(create_app(settings)) as client:
        yield client


def test_the_stores_are_seconds_apart_in_orthancs_own_times(manifests):
    stamps = sorted(seconds(s) for s in manifests.home.values())
    assert len(stamps) == 3 and all(b - a >= 2 for a, b in itertools.pairwise(stamps))


@pytest.mark.parametrize("prefix", ["ap", "gt", "lt", "ge", "le", "eq", "ne", "sa", "eb"])
@pytest.mark.parametrize(("base", "rtype", "per_kos"), [(R5, "ImagingSelection", 1), (R4, "DocumentReference", 2)])
def test_manifests_by_every_prefix_paged_to_the_end(manifests, facade, prefix, base, rtype, per_kos):
    pivot = manifests.home[str(manifests.kos["conference"].SOPInstanceUID)]
    before = time.time()
    paged = every_page(facade, f"{base}/{rtype}?_lastUpdated={prefix}{instant(pivot)}&_count=1")
    after = time.time()
    found = [kos_uid(r) for r in paged]
    # ap's tolerance grows with the time since the pivot: what is surely in, and what may be
    surely = {uid for uid, t in manifests.home.items() if matching(prefix, pivot, before)(t)}
    maybe = {uid for uid, t in manifests.home.items() if matching(prefix, pivot, after)(t)}
    assert surely <= set(found) <= maybe, (prefix, rtype)
    assert len(found) == len(set(found)) * per_kos and len({r["id"] for r in paged}) == len(paged)
    for r in paged:
        assert r["meta"]["lastUpdated"] == instant(manifests.home[kos_uid(r)])
    if prefix != "ap":
        counted = facade.get(f"{base}/{rtype}", params={"_lastUpdated": f"{prefix}{instant(pivot)}", "_count": 0})
        assert counted.json()["total"] == len(paged) and "entry" not in counted.json()


def test_with_the_patient_and_the_identifier(manifests, facade):
    conference = str(manifests.kos["conference"].SOPInstanceUID)
    pivot = instant(manifests.home[conference])
    mine = facade.get(
        f"{R4}/DocumentReference", params={"patient": A, "_lastUpdated": f"ge{pivot}", "_total": "accurate"}
    ).json()
    assert mine["total"] == 2 and {kos_uid(e["resource"]) for e in mine["entry"]} == {conference}
    teaching = str(manifests.kos["teaching"].SOPInstanceUID)
    by_id = {"identifier": f"urn:dicom:uid|urn:oid:{teaching}", "_lastUpdated": f"lt{pivot}"}
    (selection,) = [e["resource"] for e in facade.get(f"{R5}/ImagingSelection", params=by_id).json()["entry"]]
    assert selection["meta"]["lastUpdated"] == instant(manifests.home[teaching])
    missed = facade.get(f"{R5}/ImagingSelection", params=by_id | {"_lastUpdated": f"gt{pivot}"}).json()
    assert "entry" not in missed
    read = facade.get(f"{R5}/ImagingSelection/{selection['id']}").json()
    assert read["meta"]["lastUpdated"] == selection["meta"]["lastUpdated"]


def test_the_capability_statement_and_a_dicomweb_pacs(manifests, facade):
    for base, rtype in ((R5, "ImagingSelection"), (R4, "DocumentReference")):
        caps = facade.get(f"{base}/metadata").json()["rest"][0]["resource"]
        assert "_lastUpdated" in {p["name"] for r in caps if r["type"] == rtype for p in r["searchParam"]}
    settings = Settings(dicomweb_url=manifests.server.dicomweb_url, auth_mode="open")
    with checking_client(create_app(settings)) as plain:
        r = plain.get(f"{R5}/ImagingSelection", params={"_lastUpdated": "gt2020"})
        assert r.status_code == 400 and "_lastUpdated" in r.json()["issue"][0]["diagnostics"]


# -- several archives ---------------------------------------------------------------------------------------------


@dataclass
class TwoArchives:
    north: OrthancServer
    south: OrthancServer
    shared: str  # a study held by both, stored into south APART seconds after north
    north_only: str
    south_only: str
    kos: str  # a KOS stored in the shared study, in south


@pytest.fixture(scope="module")
def two() -> Iterator[TwoArchives]:
    who = {"patient_id": "LU-F", "patient_name": "Fed^Erica", "issuer": "NORTH"}
    shared = make_study(71, "shared", **who)
    north_only = make_study(71, "north", **who, study_date="20230101")
    south_only = make_study(71, "south", **who, study_date="20220101")
    kos = make_kos(shared[:1], title=FOR_TEACHING, seed=71)
    with OrthancServer() as north, OrthancServer() as south:
        store(north.dicomweb_url, [*shared, *north_only])
        time.sleep(APART)
        store(south.dicomweb_url, [*shared, *south_only, kos])
        yield TwoArchives(
            north,
            south,
            str(shared[0].StudyInstanceUID),
            str(north_only[0].StudyInstanceUID),
            str(south_only[0].StudyInstanceUID),
            str(kos.SOPInstanceUID),
        )


def _federated(two: TwoArchives, south_kind: str = "orthanc") -> TestClient:
    sources = (
        SourceSettings(name="north", dicomweb_url=two.north.dicomweb_url, issuer="NORTH", pacs_kind="orthanc"),
        SourceSettings(name="south", dicomweb_url=two.south.dicomweb_url, issuer="SOUTH", pacs_kind=south_kind),
    )
    return checking_client(create_app(Settings(sources=sources, auth_mode="open", upstream_retries=0)))


def test_a_study_held_by_two_archives_changed_when_the_later_one_says(two):
    early = last_update(two.north.url, two.shared)
    late = last_update(two.south.url, two.shared)
    assert seconds(late) - seconds(early) >= 2
    truth = {
        two.shared: late,  # the later of the two archives' times
        two.north_only: last_update(two.north.url, two.north_only),
        two.south_only: last_update(two.south.url, two.south_only),
    }
    with _federated(two) as client:
        for prefix in ("gt", "eq", "le", "ne"):
            check = matching(prefix, early, time.time())
            found = every_page(client, f"{R4}/ImagingStudy?_lastUpdated={prefix}{instant(early)}&_count=1")
            assert {s["id"] for s in found} == {uid for uid, t in truth.items() if check(t)}, prefix
            assert all(s["meta"]["lastUpdated"] == instant(truth[s["id"]]) for s in found)
        patient = patient_ids.encode("LU-F", "NORTH")
        mine = client.get(f"{R4}/ImagingStudy", params={"patient": patient, "_lastUpdated": f"gt{instant(early)}"})
        assert {e["resource"]["id"] for e in mine.json()["entry"]} == {u for u, t in truth.items() if t > early}
        assert client.get(f"{R4}/ImagingStudy/{two.shared}").json()["meta"]["lastUpdated"] == instant(late)
        docs = client.get(f"{R4}/DocumentReference", params={"_lastUpdated": f"gt{instant(early)}"}).json()
        assert {kos_uid(e["resource"]) for e in docs["entry"]} == {two.kos}
        assert {e["resource"]["meta"]["lastUpdated"] for e in docs["entry"]} == {instant(truth[two.shared])}
        caps = client.get(f"{R4}/metadata").json()["rest"][0]["resource"]
        assert "_lastUpdated" in {p["name"] for r in caps if r["type"] == "ImagingStudy" for p in r["searchParam"]}


def test_one_archive_that_is_not_an_orthanc_refuses_it_by_name(two):
    with _federated(two, south_kind="dicomweb") as client:
        r = client.get(f"{R4}/ImagingStudy", params={"_lastUpdated": "gt2020"})
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
        assert "'south'" in r.json()["issue"][0]["diagnostics"]
        caps = client.get(f"{R4}/metadata").json()["rest"][0]["resource"]
        assert "_lastUpdated" not in {p["name"] for r in caps for p in r.get("searchParam", [])}
