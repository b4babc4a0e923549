"""Searches by a series/instance-level criterion leave rejected instances out, on a real Orthanc (issue 9, item 4).

IOCM rejection notes (IHE RAD TF-2 Rejection Note, KOS titles 113001/113037/113038/113039) hide instances from
ImagingStudy content; a search by ``instance``, ``dicom-class``, ``series`` or ``bodysite`` must not find a study
through them either, in R4 and R5, for a page and for every form that counts or sorts every match.

    study A  series 1 (CHEST): a0 rejected, a1 kept      instance=a0 → nothing   instance=a1 → A
             series 2 (KNEE):  a2, a3 both rejected      series=2, bodysite=KNEE → nothing; series=1 → A
             series 50: one multi-frame SC, rejected     dicom-class=<MF SC> → nothing; dicom-class=CT → A
    study B  b0, b1; a teaching file (not a rejection)   instance=b0 → B
    study C  series of 3, c2 never stored; a 113039      series=C's → C (c1 is kept: counting the rejected
             note rejects c0 and c2                      references against the series' size would lose C)
    study D  (another patient) a CT series, and an MR    modality=MR → nothing; modality=CT → D, which names
             series whose only instance is rejected      CT only (ModalitiesInStudy from Orthanc says CT\\MR)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom import Dataset
from starlette.testclient import TestClient

from app.fhir import patient_ids
from app.main import create_app
from app.settings import Settings
from tests.support.dataset import CT_IMAGE_STORAGE
from tests.support.fhir_check import checking_client
from tests.support.kos import (
    DATA_RETENTION_POLICY_EXPIRED,
    FOR_TEACHING,
    MULTIFRAME_SC_SOP_CLASS_UID,
    REJECTED_FOR_QUALITY,
    make_kos,
    make_multiframe,
    make_study,
)
from tests.support.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, store

pytestmark = pytest.mark.integration
BASES = ("/fhir/R4", "/fhir/R5")
# Every form of an ImagingStudy search: a page, and the ones that read every match first
# (app.usecases.studies.all_matching).
PATIENT = patient_ids.encode("REJ0001", None)
FORMS = ("", "&_summary=count", "&_total=accurate", "&_sort=-started", "&_count=0")


@dataclass
class Pacs:
    server: OrthancServer
    a: list[Dataset]
    cine: Dataset
    b: list[Dataset]
    c: list[Dataset]
    d: list[Dataset]


@pytest.fixture(scope="module")
def pacs() -> Iterator[Pacs]:
    if orthanc_binary() is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    who = {"patient_id": "REJ0001", "patient_name": "Reject^Rita"}
    a = make_study(41, "a", **who, modality="CT", series_sizes=(2, 2), study_date="20240105")
    for ds, part in zip(a, ("CHEST", "CHEST", "KNEE", "KNEE"), strict=True):
        ds.BodyPartExamined = part
    cine = make_multiframe(a[0], frames=2, seed=41)
    b = make_study(41, "b", **who, modality="CT", series_sizes=(2,), study_date="20240201")
    c = make_study(41, "c", **who, modality="CT", series_sizes=(3,), study_date="20240301")
    d = make_study(41, "d", patient_id="REJ0002", patient_name="Reject^Rolf", series_sizes=(1, 1))
    d[1].Modality = "MR"
    notes = [
        make_kos([a[0], a[2], a[3], cine], title=REJECTED_FOR_QUALITY, seed=41),
        make_kos([b[0]], title=FOR_TEACHING, seed=41),
        make_kos([c[0], c[2]], title=DATA_RETENTION_POLICY_EXPIRED, seed=41),
        make_kos([d[1]], title=REJECTED_FOR_QUALITY, seed=42),
    ]
    with OrthancServer() as server:
        store(server.dicomweb_url, [*a, cine, *b, c[0], c[1], *d, *notes])  # c[2]: deleted after its rejection
        yield Pacs(server, a, cine, b, c, d)


@pytest.fixture(scope="module")
def facade(pacs: Pacs) -> Iterator[TestClient]:
    with checking_client(create_app(Settings(auth_mode="open", dicomweb_url=pacs.server.dicomweb_url))) as client:
        yield client


def found(client: TestClient, base: str, query: str) -> tuple[set[str], int | None]:
    """The study UIDs a search finds, and its Bundle.total."""
    r = client.get(f"{base}/ImagingStudy?{query}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    uids = {e["resource"]["id"] for e in body.get("entry", []) if e["resource"]["resourceType"] == "ImagingStudy"}
    return uids, body.get("total")


def bodysite(base: str) -> str:
    return "bodysite" if base.endswith("R4") else "body-site"


def _cases(p: Pacs, base: str) -> list[tuple[str, set[str]]]:
    a, b, c = p.a[0].StudyInstanceUID, p.b[0].StudyInstanceUID, p.c[0].StudyInstanceUID
    return [
        (f"instance={p.a[0].SOPInstanceUID}", set()),
        (f"instance={p.cine.SOPInstanceUID}", set()),
        (f"instance={p.a[1].SOPInstanceUID}", {a}),  # a kept instance of the same study still finds it
        (f"instance={p.a[0].SOPInstanceUID},{p.a[1].SOPInstanceUID}", {a}),
        (f"instance={p.b[0].SOPInstanceUID}", {b}),  # selected by a teaching file, not rejected
        (f"dicom-class={MULTIFRAME_SC_SOP_CLASS_UID}", set()),
        (f"dicom-class=urn:oid:{CT_IMAGE_STORAGE}&patient={PATIENT}", {a, b, c}),
        (f"series={p.a[2].SeriesInstanceUID}", set()),
        (f"series={p.cine.SeriesInstanceUID}", set()),
        (f"series={p.a[0].SeriesInstanceUID}", {a}),  # one of its two instances is left
        (f"series={p.c[0].SeriesInstanceUID}", {c}),  # c1 is left, though two of three are named rejected
        (f"{bodysite(base)}=KNEE", set()),
        (f"{bodysite(base)}=CHEST", {a}),
        (f"instance={p.a[0].SOPInstanceUID}&series={p.a[0].SeriesInstanceUID}", set()),
    ]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("base", BASES)
def test_rejected_instances_find_no_study(facade: TestClient, pacs: Pacs, base: str, form: str) -> None:
    for query, want in _cases(pacs, base):
        uids, total = found(facade, base, query + form)
        if form in ("&_summary=count", "&_count=0"):
            assert (uids, total) == (set(), len(want)), (query + form, total)
        else:
            assert uids == want, query + form
            if form == "&_total=accurate":
                assert total == len(want), query + form


@pytest.mark.parametrize("form", (*FORMS, "&_summary=true"))
@pytest.mark.parametrize("base", BASES)
def test_a_modality_whose_instances_are_all_rejected_is_neither_shown_nor_found(
    facade: TestClient, pacs: Pacs, base: str, form: str
) -> None:
    """ModalitiesInStudy is the PACS's (CT\\MR: Orthanc counts the rejected MR instance); the ImagingStudy shows
    the CT series only, so it must not say MR, and a modality=MR search must not find it. A counted total
    (``_summary=count``, ``_total=accurate``) is the PACS's and still counts it: known, stated in docs/manifests.md."""
    d = pacs.d[0].StudyInstanceUID
    patient = patient_ids.encode("REJ0002", None)
    r = facade.get(f"{base}/ImagingStudy?patient={patient}&modality=MR{form}")
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json().get("entry", [])] == []
    r = facade.get(f"{base}/ImagingStudy?patient={patient}&modality=CT{form}")
    entries = [e["resource"] for e in r.json().get("entry", [])]
    if form in ("&_summary=count", "&_count=0"):
        assert (entries, r.json()["total"]) == ([], 1)
        return
    assert [s["id"] for s in entries] == [d]
    codes = [c["code"] for c in entries[0]["modality"]] if base.endswith("R4") else None
    if codes is not None:
        assert codes == ["CT"]
    else:
        assert [cc["code"] for m in entries[0]["modality"] for cc in m["coding"]] == ["CT"]
    series = entries[0].get("series", [])
    shown = sorted(s["modality"]["code"] if base.endswith("R4") else s["modality"]["coding"][0]["code"] for s in series)
    assert shown == ["CT", "KO"]  # the rejection note is an instance of the study


def test_a_read_names_the_modalities_shown(facade: TestClient, pacs: Pacs) -> None:
    r = facade.get(f"/fhir/R4/ImagingStudy/{pacs.d[0].StudyInstanceUID}")
    assert r.status_code == 200, r.text
    assert [c["code"] for c in r.json()["modality"]] == ["CT"]
    assert r.json()["numberOfSeries"] == 2  # the CT series and the rejection note's KO series


def test_without_hide_rejected_the_same_searches_find_the_study(pacs: Pacs) -> None:
    """The data set really holds the rejected instances (what the searches above leave out is the facade's doing)."""
    settings = Settings(auth_mode="open", dicomweb_url=pacs.server.dicomweb_url, hide_rejected=False)
    with checking_client(create_app(settings)) as raw:
        a = pacs.a[0].StudyInstanceUID
        for query in (
            f"instance={pacs.a[0].SOPInstanceUID}",
            f"dicom-class={MULTIFRAME_SC_SOP_CLASS_UID}",
            f"series={pacs.a[2].SeriesInstanceUID}",
            "bodysite=KNEE",
        ):
            assert found(raw, "/fhir/R4", query)[0] == {a}, query


def test_screening_costs_one_ko_query_and_nothing_without_a_match(facade: TestClient, pacs: Pacs) -> None:
    """Cost (measured on the upstream counters, with the cache bypassed): a pre-query that matched something adds
    one KO instance query for its studies (the notes' contents are cached for good), and one instance query when a
    series found may have lost every instance; one that matched nothing adds nothing."""
    calls = facade.app.state.upstream.stats.calls  # type: ignore[attr-defined]
    nocache = {"cache-control": "no-cache"}

    def qido_calls(query: str) -> int:
        facade.get(f"/fhir/R4/ImagingStudy?{query}", headers=nocache)  # warm the document cache
        before = calls["qido", "ok"]
        r = facade.get(f"/fhir/R4/ImagingStudy?{query}", headers=nocache)
        assert r.status_code == 200, r.text
        return int(calls["qido", "ok"] - before)

    # pre-query + KO screen + study rows + instance rows (the last two go out together)
    assert qido_calls(f"instance={pacs.a[1].SOPInstanceUID}") == 4
    assert qido_calls("instance=1.2.3.4.5.6.7.8.9") == 1  # the pre-query found nothing: nothing else asked
    assert qido_calls(f"series={pacs.a[0].SeriesInstanceUID}") == 4  # one of two rejected: the count settles it
    # Every instance may be rejected: the series' instances are asked for too (C keeps one, A's series 2 none).
    assert qido_calls(f"series={pacs.c[0].SeriesInstanceUID}") == 5
    assert qido_calls(f"series={pacs.a[2].SeriesInstanceUID}") == 3
