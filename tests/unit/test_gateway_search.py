"""app.usecases.gateway_search on plain values: a fake PACS that pages a list of DICOM JSON rows as Orthanc does
(``limit``/``offset``, and the ModalitiesInStudy offset quirk), a fake facade (patient keys, IOCM screen). What
each test checks: the PACS query, the rows answered, the Warning values (issue 20 rules 1 to 3).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest

from app.dicom import dicom_json as dj
from app.dicom.media_type import accepts_dicom_json
from app.dicom.qido import QidoQuery
from app.dicom.qido_rs import parse_qido
from app.errors import TooCostly
from app.fhir.search import PatientKey
from app.pacs.federation import WadoSource
from app.pacs.wado import WadoAnswer
from app.usecases.gateway_search import FUZZY, TRUNCATED, GatewaySearch
from tests.unit.helpers import Stream

PACS = "http://pacs.internal:8042/dicom-web"
PUBLIC = "https://img.example/dicomweb"


def study(n: int, pid: str = "MRN1", modality: str = "CT") -> dj.Dataset:
    uid = f"1.2.{n}"
    return {
        dj.STUDY_UID: {"vr": "UI", "Value": [uid]},
        dj.PATIENT_ID: {"vr": "LO", "Value": [pid]},
        dj.MODALITIES_IN_STUDY: {"vr": "CS", "Value": [modality]},
        "00081190": {"vr": "UR", "Value": [f"{PACS}/studies/{uid}"]},
    }


def instance(n: int, series: str = "1.2.1.1") -> dj.Dataset:
    return {
        dj.STUDY_UID: {"vr": "UI", "Value": ["1.2.1"]},
        dj.SERIES_UID: {"vr": "UI", "Value": [series]},
        dj.SOP_INSTANCE_UID: {"vr": "UI", "Value": [f"{series}.{n}"]},
        dj.PATIENT_ID: {"vr": "LO", "Value": ["MRN1"]},
    }


@dataclass
class Pacs:
    """Matches nothing itself (every row for every query, as a PACS that ignores the keys), pages like Orthanc."""

    rows: list[dj.Dataset]
    asked: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    async def search(self, query: QidoQuery) -> WadoAnswer:
        self.paths.append(query.path)
        params = dict(query.params)
        self.asked.append(params)
        limit, offset = int(params.get("limit", 10**6)), int(params.get("offset", 0))
        if "ModalitiesInStudy" in params:  # Orthanc 1.10: limit matches, then skip offset of them
            page = self.rows[:limit][offset:]
        else:
            page = self.rows[offset : offset + limit]
        return WadoAnswer(httpx.Response(200, stream=Stream([orjson.dumps(page)])))


@dataclass
class Settings:
    prequery_limit: int = 2000
    instance_limit: int = 20000


class Rejected:
    def __init__(self, sops: frozenset[str]) -> None:
        self.sops = sops

    def recount(self, fetch: Any) -> Any:
        if not self.sops:
            return None

        async def screen(level: str, rows: list[dj.Dataset]) -> list[dj.Dataset]:
            return [r for r in rows if dj.text(r, dj.SOP_INSTANCE_UID) not in self.sops]

        return screen


class Facade:
    def __init__(self, rejected: frozenset[str] = frozenset(), **settings: Any) -> None:
        self.settings = Settings(**settings)
        self.rejected = Rejected(rejected)

    async def subject_keys(self, patient: str) -> list[PatientKey]:
        return [PatientKey(patient.upper(), None)] if patient else []

    def _fetcher(self, fresh: bool) -> None:
        return None


def search(
    pacs: Pacs, facade: Facade, level: str, query: str, *, patient: str | None = None, **kw: Any
) -> tuple[list[dj.Dataset], list[str]]:
    searches = GatewaySearch(facade, [WadoSource("pacs", None, pacs)], max_json_bytes=10**7)  # type: ignore[arg-type]
    req = parse_qido(level, parse_qsl(query, keep_blank_values=True))
    args: dict[str, Any] = {"capability_study": None, "study": None, "series": None} | kw
    found = asyncio.run(
        searches.search(req, patient=patient, public_base=PUBLIC, agent="img.example", **args)  # type: ignore[arg-type]
    )
    return orjson.loads(found.body), found.warnings


def uids(rows: list[dj.Dataset], tag: str = dj.STUDY_UID) -> list[str]:
    return [dj.text(r, tag) or "" for r in rows]


class TestPaging:
    def test_exact_searches_are_paged_by_the_pacs_with_one_row_more(self) -> None:
        pacs = Pacs([study(n) for n in range(10)])
        rows, warnings = search(pacs, Facade(), "studies", "PatientID=MRN1&limit=3&offset=6")
        assert uids(rows) == ["1.2.6", "1.2.7", "1.2.8"] and warnings == []
        assert pacs.asked == [{"PatientID": "MRN1", "limit": "4", "offset": "6"}]

    def test_modalities_in_study_pages_from_offset_zero_and_cuts_here(self) -> None:
        pacs = Pacs([study(n) for n in range(10)])
        rows, _ = search(pacs, Facade(), "studies", "ModalitiesInStudy=CT&limit=3&offset=6")
        assert uids(rows) == ["1.2.6", "1.2.7", "1.2.8"]
        assert pacs.asked[0]["limit"] == "10" and "offset" not in pacs.asked[0]

    def test_a_deep_modality_page_past_the_bound_is_too_costly(self) -> None:
        pacs = Pacs([study(n) for n in range(10)])
        with pytest.raises(TooCostly):
            search(pacs, Facade(prequery_limit=5), "studies", "ModalitiesInStudy=CT&limit=3&offset=6")

    def test_rows_left_out_on_a_later_page_mean_reading_from_the_first(self) -> None:
        # A patient-confined search (no issuer: another issuer's MRN1 rows are left out by the check): pages
        # are cut after the checks, so page 2 starts after the first two of *this* patient's rows.
        pacs = Pacs([study(0), study(1, "MRN2"), study(2), study(3), study(4, "MRN2"), study(5)])
        rows, _ = search(pacs, Facade(), "studies", "limit=2&offset=2", patient="mrn1")
        assert uids(rows) == ["1.2.3", "1.2.5"]
        assert pacs.asked == [{"PatientID": "MRN1", "includefield": "00100021", "limit": "2001"}]

    def test_a_first_page_with_a_row_left_out_is_read_again_from_the_first(self) -> None:
        pacs = Pacs([study(0), study(1, "MRN2"), study(2), study(3)])
        rows, warnings = search(pacs, Facade(), "studies", "limit=2", patient="mrn1")
        assert uids(rows) == ["1.2.0", "1.2.2"] and warnings == []
        assert [a["limit"] for a in pacs.asked] == ["3", "2001"]

    def test_a_first_page_with_nothing_left_out_is_one_request(self) -> None:
        pacs = Pacs([study(0), study(1), study(2)])
        rows, _ = search(pacs, Facade(), "studies", "limit=2", patient="mrn1")
        assert uids(rows) == ["1.2.0", "1.2.1"] and len(pacs.asked) == 1

    def test_iocm_rejected_instances_never_appear_and_pages_stay_exact(self) -> None:
        pacs = Pacs([instance(n) for n in range(6)])
        facade = Facade(rejected=frozenset({"1.2.1.1.1"}))
        rows, _ = search(pacs, facade, "instances", "limit=2&offset=2", study="1.2.1")
        assert uids(rows, dj.SOP_INSTANCE_UID) == ["1.2.1.1.3", "1.2.1.1.4"]
        rows, _ = search(pacs, facade, "instances", "", study="1.2.1")
        assert "1.2.1.1.1" not in uids(rows, dj.SOP_INSTANCE_UID) and len(rows) == 5


class TestWarnings:
    def test_more_matches_than_the_bound_without_a_limit_say_so(self) -> None:
        pacs = Pacs([study(n) for n in range(6)])
        rows, warnings = search(pacs, Facade(prequery_limit=4), "studies", "")
        assert len(rows) == 4 and warnings == [f'299 img.example "{TRUNCATED}"']

    def test_the_clients_own_limit_is_no_truncation(self) -> None:
        pacs = Pacs([study(n) for n in range(6)])
        assert search(pacs, Facade(prequery_limit=4), "studies", "limit=2")[1] == []
        assert search(pacs, Facade(prequery_limit=4), "studies", "limit=5")[1] == [f'299 img.example "{TRUNCATED}"']
        assert search(pacs, Facade(prequery_limit=10), "studies", "limit=6")[1] == []

    def test_fuzzymatching_true_is_answered_literally_with_a_warning(self) -> None:
        pacs = Pacs([study(0)])
        _, warnings = search(pacs, Facade(), "studies", "fuzzymatching=true")
        assert warnings == [f'299 img.example "{FUZZY}"'] and "fuzzymatching" not in pacs.asked[0]


class TestScope:
    def test_retrieve_urls_point_at_the_gateway(self) -> None:
        rows, _ = search(Pacs([study(0)]), Facade(), "studies", "")
        assert rows[0]["00081190"]["Value"] == [f"{PUBLIC}/studies/1.2.0"]

    def test_another_patients_rows_never_pass(self) -> None:
        pacs = Pacs([study(0, "MRN2"), study(1, "MRN1"), study(2, "mrn1")])
        rows, _ = search(pacs, Facade(), "studies", "PatientID=*", patient="mrn1")
        assert uids(rows) == ["1.2.1"]
        assert pacs.asked[0]["PatientID"] == "MRN1"

    def test_a_patient_without_keys_asks_nothing(self) -> None:
        pacs = Pacs([study(0)])
        assert search(pacs, Facade(), "studies", "", patient="")[0] == [] and pacs.asked == []

    def test_capability_and_path(self) -> None:
        pacs = Pacs([study(0), study(1)])
        rows, _ = search(pacs, Facade(), "studies", "", capability_study="1.2.1")
        assert uids(rows) == ["1.2.1"] and pacs.asked[0]["StudyInstanceUID"] == "1.2.1"
        assert search(pacs, Facade(), "studies", "StudyInstanceUID=1.2.0", capability_study="1.2.1")[0] == []
        pacs = Pacs([instance(0), instance(1, "1.2.1.2")])
        rows, _ = search(pacs, Facade(), "instances", "", study="1.2.1", series="1.2.1.2")
        assert uids(rows, dj.SERIES_UID) == ["1.2.1.2"]
        assert pacs.paths[-1] == "instances?SeriesInstanceUID=1.2.1.2&StudyInstanceUID=1.2.1&limit=20001"


@pytest.mark.parametrize(
    ("accept", "ok"),
    [
        (None, True),
        ("", True),
        ("*/*", True),
        ("application/dicom+json", True),
        ("application/json, text/plain, */*", True),
        ("application/dicom+json;q=0, */*;q=0", False),
        ('multipart/related; type="application/dicom+xml"', False),
        ("text/html", False),
    ],
)
def test_qido_accept(accept: str | None, ok: bool) -> None:
    assert accepts_dicom_json(accept) is ok
