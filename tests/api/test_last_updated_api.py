"""``_lastUpdated`` and ``meta.lastUpdated`` through the app (issue 22) on mocked archives with Orthanc's REST API
beside DICOMweb: the key-image manifests (R4 DocumentReference, R5 ImagingSelection: the last change of the study
the KOS is stored in), several archives (the latest of their times; one that cannot say refuses the parameter, one
whose REST API fails is noted and what it may hold is not judged), and the CapabilityStatement listing it exactly
where it is answered. The same against live Orthancs: tests/integration/test_last_updated_orthanc.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from app.fhir import patient_ids
from app.main import create_app
from app.settings import Settings
from app.source_settings import SourceSettings
from tests.api.test_document_reference_api import Pacs
from tests.api.test_federation_api import Archive, _north, _south
from tests.support.fhir_check import checking_client

R4, R5 = "/fhir/R4", "/fhir/R5"
T1, T2, T3 = "20260101T100000", "20260102T100000", "20260103T100000"
A = patient_ids.encode("MRN-A", None)
FRESH = {"Cache-Control": "no-cache"}


def instant(stamp: str) -> str:
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}Z"


class Rest:
    """Orthanc's REST API: ``POST /tools/find`` gives each held study's LastUpdate; the change feed stays idle."""

    def __init__(self, stamps: dict[str, str]) -> None:
        self.stamps = stamps
        self.mode = "up"
        self.finds = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/tools/find":
            self.finds += 1
            if self.mode == "down":
                raise httpx.ConnectError("refused", request=request)
            query = orjson.loads(request.content)["Query"]
            uids = query["StudyInstanceUID"].split("\\")
            held = [u for u in uids if u in self.stamps]
            return httpx.Response(
                200, json=[{"MainDicomTags": {"StudyInstanceUID": u}, "LastUpdate": self.stamps[u]} for u in held]
            )
        if path == "/changes":
            return httpx.Response(200, json={"Changes": [], "Done": True, "Last": 0})
        if path == "/statistics":
            return httpx.Response(200, json={"CountPatients": 0, "CountStudies": 0, "CountSeries": 0})
        return httpx.Response(404)


def matches(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]


def outcomes(r: httpx.Response) -> list[dict[str, Any]]:
    return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "outcome"]


def every_page(client: TestClient, url: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        r = client.get(next_url)
        seen += matches(r)
        next_url = next((lk["url"] for lk in r.json()["link"] if lk["relation"] == "next"), None)
    return seen


def params_of(client: TestClient, base: str, rtype: str) -> set[str]:
    caps = client.get(f"{base}/metadata").json()["rest"][0]["resource"]
    return {p["name"] for r in caps if r["type"] == rtype for p in r.get("searchParam", [])}


# -- one PACS: the key-image manifests ----------------------------------------------------------------------------


@pytest.fixture
def data(pacs) -> Pacs:
    d = Pacs()
    d.install(pacs)
    return d


@pytest.fixture
def rest(pacs, data) -> Rest:
    """The CT study (where patient A's teaching KOS is stored) changed first, the MR study it also selects from
    next, patient B's study (with its KOS) last."""
    stamps = {str(data.ct[0].StudyInstanceUID): T1, str(data.mr[0].StudyInstanceUID): T2}
    stamps[str(data.b[0].StudyInstanceUID)] = T3
    r = Rest(stamps)
    pacs.route(host="pacs.test", path__regex=r"^/(tools/find|changes|statistics)$").mock(side_effect=r)
    return r


@pytest.fixture
def orthanc(make_client, rest) -> TestClient:
    return make_client(pacs_kind="orthanc")  # type: ignore[no-any-return]


def test_the_capability_statement_lists_it_where_it_is_answered(orthanc, client):
    for base, types in ((R4, ("ImagingStudy", "DocumentReference")), (R5, ("ImagingStudy", "ImagingSelection"))):
        for rtype in types:
            assert "_lastUpdated" in params_of(orthanc, base, rtype), (base, rtype)
            assert "_lastUpdated" not in params_of(client, base, rtype), (base, rtype)  # pacs_kind = dicomweb
        assert "_lastUpdated" not in params_of(orthanc, base, "Patient")


def test_document_references_by_the_last_change_of_the_study_their_kos_is_stored_in(data, orthanc):
    late = matches(orthanc.get(f"{R4}/DocumentReference", params={"_lastUpdated": "gt2026-01-02"}))
    assert {d["masterIdentifier"]["value"] for d in late} == {f"urn:oid:{data.other.SOPInstanceUID}"}
    assert len(late) == 2 and {d["meta"]["lastUpdated"] for d in late} == {instant(T3)}
    assert all(d["meta"]["profile"] for d in late)  # meta keeps what it said
    # The teaching KOS selects from the MR study too (changed at T2), but is stored in the CT study (T1).
    early = matches(orthanc.get(f"{R4}/DocumentReference", params={"_lastUpdated": "lt2026-01-02T10:00:00Z"}))
    assert {d["masterIdentifier"]["value"] for d in early} == {f"urn:oid:{data.teaching.SOPInstanceUID}"}
    assert {d["meta"]["lastUpdated"] for d in early} == {instant(T1)}


@pytest.mark.parametrize("value", ["ge2026-01-01T10:00:00Z", "eq2026-01-01", "ap2026-01-01T10:00:00Z", "ne2026-01-03"])
def test_with_the_patient_paged_and_counted_exactly(data, orthanc, value):
    query = {"patient": A, "_lastUpdated": value}
    paged = every_page(orthanc, f"{R4}/DocumentReference?patient={A}&_lastUpdated={value}&_count=1")
    assert len(paged) == 2 and len({d["id"] for d in paged}) == 2
    total = orthanc.get(f"{R4}/DocumentReference", params=query | {"_total": "accurate", "_count": 1}).json()
    assert total["total"] == 2 and len(total["entry"]) == 1
    assert orthanc.get(f"{R4}/DocumentReference", params=query | {"_summary": "count"}).json()["total"] == 2
    none = orthanc.get(f"{R4}/DocumentReference", params={"patient": A, "_lastUpdated": "gt2026-01-01T10:00:00Z"})
    assert matches(none) == [] and none.json().get("total", 0) == 0


def test_imaging_selections_the_same(data, orthanc, rest):
    query = {"_lastUpdated": "le2026-01-01T10:00:00Z", "_total": "accurate"}
    before = rest.finds
    found = orthanc.get(f"{R5}/ImagingSelection", params=query).json()
    assert rest.finds - before == 1  # the times read for the search serve meta.lastUpdated too
    selections = [e["resource"] for e in found["entry"]]
    assert found["total"] == 2 and {s["studyUid"] for s in selections} == {
        str(data.ct[0].StudyInstanceUID),
        str(data.mr[0].StudyInstanceUID),
    }
    assert {s["meta"]["lastUpdated"] for s in selections} == {instant(T1)}
    paged = every_page(orthanc, f"{R5}/ImagingSelection?_lastUpdated=sa2026-01-01T10:00:00Z&_count=1")
    assert [s["meta"]["lastUpdated"] for s in paged] == [instant(T3)]
    counted = orthanc.get(f"{R5}/ImagingSelection", params={"_lastUpdated": "eb2026-01-03", "_summary": "count"})
    assert counted.json()["total"] == 2


def test_reads_and_searches_carry_meta(data, orthanc):
    (selection, *_) = matches(orthanc.get(f"{R5}/ImagingSelection", params={"patient": A}))
    assert orthanc.get(f"{R5}/ImagingSelection/{selection['id']}").json()["meta"]["lastUpdated"] == instant(T1)
    docs = matches(orthanc.get(f"{R4}/DocumentReference", params={"patient": A}))
    assert {d["meta"]["lastUpdated"] for d in docs} == {instant(T1)}
    for d in docs:
        read = orthanc.get(f"{R4}/DocumentReference/{d['id']}").json()
        assert read["meta"]["lastUpdated"] == instant(T1) and read["meta"]["profile"] == d["meta"]["profile"]
    bundles = {a["url"] for d in docs for c in d["content"] if "Bundle/" in (a := c["attachment"]).get("url", "")}
    assert bundles  # the FHIR form's document (IHE MADO): its Bundle read carries the same time
    for url in bundles:
        document = orthanc.get(url).json()
        assert document["type"] == "document" and document["meta"]["lastUpdated"] == instant(T1)
    subset = matches(orthanc.get(f"{R4}/DocumentReference", params={"patient": A, "_elements": "status"}))
    assert {d["meta"]["lastUpdated"] for d in subset} == {instant(T1)}
    with_studies = orthanc.get(
        f"{R5}/ImagingSelection", params={"patient": A, "_include": "ImagingSelection:derived-from"}
    )
    included = [e["resource"] for e in with_studies.json()["entry"] if e["search"]["mode"] == "include"]
    assert {s["id"]: s["meta"]["lastUpdated"] for s in included} == {
        str(data.ct[0].StudyInstanceUID): instant(T1),
        str(data.mr[0].StudyInstanceUID): instant(T2),
    }


def test_refused_where_it_cannot_be_answered(data, orthanc, client):
    r = orthanc.get(f"{R4}/Patient", params={"_lastUpdated": "gt2026"})
    assert r.status_code == 400 and "not supported on Patient" in r.json()["issue"][0]["diagnostics"]
    for url in (f"{R5}/ImagingSelection", f"{R4}/DocumentReference", f"{R4}/ImagingStudy"):
        r = client.get(url, params={"_lastUpdated": "gt2026"})
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
        assert "pacs_kind = dicomweb" in r.json()["issue"][0]["diagnostics"]
    assert "lastUpdated" not in matches(client.get(f"{R4}/DocumentReference", params={"patient": A}))[0]["meta"]


def test_a_failing_rest_api_fails_what_asked_and_leaves_meta_out_of_the_rest(data, orthanc, rest):
    rest.mode = "down"
    r = orthanc.get(f"{R4}/DocumentReference", params={"patient": A, "_lastUpdated": "gt2020"}, headers=FRESH)
    assert r.status_code in (502, 503) and "pacs.test" not in r.text
    docs = matches(orthanc.get(f"{R4}/DocumentReference", params={"patient": A}, headers=FRESH))
    assert docs and all("lastUpdated" not in d["meta"] for d in docs)


# -- several archives ---------------------------------------------------------------------------------------------


@pytest.fixture
def archives() -> dict[str, tuple[Archive, Rest]]:
    """north holds 1.1, 1.5 and the shared 1.9 (changed at T2 there); south 2.1, 2.5, 2.7 and 1.9 (at T3)."""
    return {
        "north": (_north(), Rest({"1.1": T1, "1.5": T1, "1.9": T2})),
        "south": (_south(), Rest({"2.1": T1, "2.5": T2, "2.7": T2, "1.9": T3})),
    }


@pytest.fixture
def federated(archives) -> Iterator[Any]:
    clients: list[TestClient] = []

    def handler(request: httpx.Request) -> httpx.Response:
        archive, rest = archives[request.url.host.split(".")[0]]
        return archive(request) if request.url.path.startswith("/dicom-web/") else rest(request)

    def make(kinds: dict[str, str] | None = None, **overrides: Any) -> TestClient:
        kinds = kinds or {}
        sources = tuple(
            SourceSettings(
                name=name,
                dicomweb_url=f"http://{name}.test:8042/dicom-web",
                issuer=name.upper(),
                pacs_kind=kinds.get(name, "orthanc"),
            )
            for name in archives
        )
        base = {"sources": sources, "auth_mode": "open", "cache_ttl": 60.0, "upstream_retries": 0}
        app = create_app(Settings(**(base | overrides)), transport=httpx.MockTransport(handler))
        client = checking_client(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def stamps_of(resources: list[dict[str, Any]]) -> dict[str, str | None]:
    return {r["id"]: r.get("meta", {}).get("lastUpdated") for r in resources}


def test_a_study_held_by_two_archives_changed_when_the_later_one_says(federated):
    client = federated()
    assert "_lastUpdated" in params_of(client, R4, "ImagingStudy")
    late = matches(client.get(f"{R4}/ImagingStudy", params={"_lastUpdated": "gt2026-01-02T10:00:00Z"}))
    assert stamps_of(late) == {"1.9": instant(T3)}  # north alone would say T2
    mid = every_page(client, f"{R4}/ImagingStudy?_lastUpdated=eq2026-01-02&_count=1")
    assert stamps_of(mid) == {"2.5": instant(T2), "2.7": instant(T2)}
    everything = matches(client.get(f"{R4}/ImagingStudy", params={"_count": 100}))
    assert stamps_of(everything) == {
        "1.1": instant(T1),
        "1.5": instant(T1),
        "1.9": instant(T3),
        "2.1": instant(T1),
        "2.5": instant(T2),
        "2.7": instant(T2),
    }
    assert client.get(f"{R4}/ImagingStudy/1.9").json()["meta"]["lastUpdated"] == instant(T3)
    counted = client.get(f"{R4}/ImagingStudy", params={"_lastUpdated": "lt2026-01-02", "_summary": "count"})
    assert counted.json()["total"] == 3


def test_one_archive_that_cannot_say_refuses_it_by_name(federated):
    client = federated({"south": "dicomweb"})
    r = client.get(f"{R4}/ImagingStudy", params={"_lastUpdated": "gt2026"})
    assert r.status_code == 400 and "'south'" in r.json()["issue"][0]["diagnostics"]
    assert "north" not in r.json()["issue"][0]["diagnostics"]
    assert "_lastUpdated" not in params_of(client, R4, "ImagingStudy")
    assert all("meta" not in s or "lastUpdated" not in s["meta"] for s in matches(client.get(f"{R4}/ImagingStudy")))


def test_an_archive_whose_rest_api_fails_is_noted_and_its_studies_are_not_judged(federated, archives):
    client = federated()
    archives["south"][1].mode = "down"
    r = client.get(f"{R4}/ImagingStudy", params={"_lastUpdated": "ge2020", "_total": "accurate"}, headers=FRESH)
    # 1.9 is south's too: its time there is unknown, so it is neither shown nor counted; north's own studies are
    assert stamps_of(matches(r)) == {"1.1": instant(T1), "1.5": instant(T1)} and r.json()["total"] == 2
    (outcome,) = outcomes(r)
    assert outcome["issue"][0]["code"] == "incomplete" and "'south'" in outcome["issue"][0]["diagnostics"]
    assert "south.test" not in r.text
    strict = client.get(
        f"{R4}/ImagingStudy", params={"_lastUpdated": "ge2020"}, headers=FRESH | {"Prefer": "handling=strict"}
    )
    assert strict.status_code == 503 and "'south'" in strict.json()["issue"][0]["diagnostics"]
    # A search that did not ask: every study, no outcome; meta only where it is known
    plain = client.get(f"{R4}/ImagingStudy", params={"_count": 100}, headers=FRESH)
    assert not outcomes(plain)
    assert stamps_of(matches(plain)) == {
        "1.1": instant(T1),
        "1.5": instant(T1),
        "1.9": None,
        "2.1": None,
        "2.5": None,
        "2.7": None,
    }
    archives["south"][1].mode = "up"
    again = client.get(f"{R4}/ImagingStudy", params={"_lastUpdated": "ge2020"}, headers=FRESH)
    assert len(matches(again)) == 6 and not outcomes(again)


def test_every_archives_rest_api_failing_is_an_error(federated, archives):
    client = federated()
    for _, rest in archives.values():
        rest.mode = "down"
    r = client.get(f"{R4}/ImagingStudy", params={"_lastUpdated": "ge2020"}, headers=FRESH)
    assert r.status_code == 503 and r.json()["resourceType"] == "OperationOutcome"
