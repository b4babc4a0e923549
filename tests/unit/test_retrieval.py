"""The gateway's use case on its own (app.usecases.retrieve.Retrieval): a fake facade gives the study's QIDO rows
and rejected instances, a MockTransport PACS records what it is asked. The rules of the module docstring: nothing
outside the authorized study is asked for, rejected instances are never served (IOCM), JSON answers are rewritten
to the public base, and a study retrieve that holds a rejected instance is put together from clean requests."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from app.dicom import dicom_json as dj
from app.dicom.wado_rewrite import WadoPath, parse_wado_path
from app.errors import NotFound, UpstreamBadResponse
from app.pacs.federation import WadoSource
from app.pacs.wado import WadoUpstream
from app.usecases.retrieve import Retrieval

PACS = "http://pacs.internal:8042/dicom-web"
PUBLIC = "https://img.example/dicomweb"
STUDY = "1.2.3"
RELATED = 'multipart/related; type="application/dicom"'


def row(series: str, sop: str, number: int = 1) -> dj.Dataset:
    return {
        dj.STUDY_UID: (STUDY,),
        dj.SERIES_UID: (series,),
        dj.SOP_INSTANCE_UID: (sop,),
        dj.INSTANCE_NUMBER: (number,),
    }


# Series 1.1 holds 1.1.1 (rejected) and 1.1.2; series 1.2 holds 1.2.1.
ROWS = [row("1.1", "1.1.1", 1), row("1.1", "1.1.2", 2), row("1.2", "1.2.1", 1)]


class Facade:
    def __init__(self, rejected: frozenset[str] = frozenset({"1.1.1"})) -> None:
        self.rejected = rejected

    async def retrievable(self, uid: str, *, patient: str | None) -> tuple[dj.Dataset, list[dj.Dataset], Any]:
        if uid != STUDY or patient not in (None, "p1"):
            raise NotFound("no such study")
        return {dj.STUDY_UID: (STUDY,), dj.PATIENT_ID: ("MRN1",)}, ROWS, self.rejected


def multipart(boundary: str, *parts: bytes) -> bytes:
    out = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts
    )
    return out + b"--" + boundary.encode() + b"--\r\n"


class Pacs:
    """Answers by path: instances and series as multipart, metadata as DICOM JSON naming the PACS's own URLs."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/dicom-web/")
        self.asked.append(path + (f"?{request.url.query.decode()}" if request.url.query else ""))
        if path.endswith("/metadata"):
            body = [
                {
                    "0020000D": {"vr": "UI", "Value": [STUDY]},
                    "0020000E": {"vr": "UI", "Value": [s]},
                    "00080018": {"vr": "UI", "Value": [sop]},
                    "7FE00010": {
                        "vr": "OB",
                        "BulkDataURI": f"{PACS}/studies/{STUDY}/series/{s}/instances/{sop}/bulk/7fe00010",
                    },
                }
                for s, sop in (("1.1", "1.1.1"), ("1.1", "1.1.2"), ("1.2", "1.2.1"))
            ]
            body.append({"0020000D": {"vr": "UI", "Value": ["9.9.9"]}})  # a dataset of another study
            return httpx.Response(200, content=orjson.dumps(body), headers={"content-type": "application/dicom+json"})
        if path.endswith("/rendered"):
            return httpx.Response(200, content=b"\xff\xd8jpeg", headers={"content-type": "image/jpeg"})
        if path.endswith("/series"):
            return httpx.Response(200, content=b"[]", headers={"content-type": "application/dicom+json"})
        name = path.rsplit("/", 1)[1].encode()
        return httpx.Response(
            200, content=multipart("upstreamB", name), headers={"content-type": f"{RELATED}; boundary=upstreamB"}
        )


def retrieval(pacs: Pacs, *, rejected: frozenset[str] = frozenset({"1.1.1"}), max_json: int = 1 << 20) -> Retrieval:
    wado = WadoUpstream(httpx.MockTransport(pacs), PACS, httpx.Timeout(5.0))
    return Retrieval(Facade(rejected), [WadoSource("pacs", None, wado)], max_json_bytes=max_json)  # type: ignore[arg-type]


async def answer(r: Retrieval, path: str, *, accept: str | None = RELATED, query: str = "") -> tuple[Any, bytes]:
    target = parse_wado_path(path)
    assert target is not None, path
    study = await r.study(STUDY, patient="p1")
    body = await r.body(target, study, accept=accept, query=query, public_base=PUBLIC)
    data = b"".join([c async for c in body.chunks])
    return body, data


def test_another_patients_study_is_not_found_and_the_pacs_is_not_asked():
    pacs = Pacs()
    with pytest.raises(NotFound):
        asyncio.run(retrieval(pacs).study(STUDY, patient="p2"))
    assert pacs.asked == []


@pytest.mark.parametrize(
    "path",
    [
        f"studies/{STUDY}/series/7.7",  # not a series of the study
        f"studies/{STUDY}/series/1.2/instances/1.1.2",  # an instance of another series
        f"studies/{STUDY}/series/1.1/instances/1.1.1",  # rejected: its own routes are 404
        f"studies/{STUDY}/series/1.1/instances/1.1.1/metadata",
        f"studies/{STUDY}/series/1.1/instances/1.1.1/rendered",
        f"studies/{STUDY}/series/1.1/instances/1.1.1/frames/1",
    ],
)
def test_what_the_study_rows_do_not_allow_is_404_without_asking_the_pacs(path: str):
    pacs = Pacs()
    with pytest.raises(NotFound):
        asyncio.run(answer(retrieval(pacs), path))
    assert pacs.asked == []


def test_a_path_of_another_study_is_404_even_with_this_studys_authorization():
    pacs = Pacs()
    r = retrieval(pacs)

    async def other() -> None:
        study = await r.study(STUDY, patient="p1")
        await r.body(WadoPath("9.9.9"), study, accept=RELATED, query="", public_base=PUBLIC)

    with pytest.raises(NotFound):
        asyncio.run(other())
    assert pacs.asked == []


def test_metadata_leaves_out_rejected_instances_and_other_studies_and_points_at_the_gateway():
    body, data = asyncio.run(answer(retrieval(Pacs()), f"studies/{STUDY}/metadata", accept="application/dicom+json"))
    datasets = orjson.loads(data)
    assert [d["00080018"]["Value"][0] for d in datasets] == ["1.1.2", "1.2.1"]
    assert b"pacs.internal" not in data
    assert (
        datasets[0]["7FE00010"]["BulkDataURI"] == f"{PUBLIC}/studies/{STUDY}/series/1.1/instances/1.1.2/bulk/7fe00010"
    )
    assert body.content_type == "application/dicom+json" and body.length == str(len(data))


def test_a_study_retrieve_holding_a_rejected_instance_is_made_of_clean_requests_under_one_boundary():
    pacs = Pacs()
    body, data = asyncio.run(answer(retrieval(pacs), f"studies/{STUDY}"))
    # Series 1.1 holds the rejected instance: its other instance alone; series 1.2 whole.
    assert pacs.asked == [f"studies/{STUDY}/series/1.1/instances/1.1.2", f"studies/{STUDY}/series/1.2"]
    boundary = body.content_type.split("boundary=")[1]
    assert boundary != "upstreamB" and data.count(b"--" + boundary.encode() + b"\r\n") == 2
    assert data.endswith(b"--" + boundary.encode() + b"--\r\n") and b"upstreamB" not in data
    assert b"1.1.1" not in data and b"1.1.2" in data and b"1.2" in data


def test_a_study_without_rejected_instances_is_one_request():
    pacs = Pacs()
    asyncio.run(answer(retrieval(pacs, rejected=frozenset()), f"studies/{STUDY}"))
    assert pacs.asked == [f"studies/{STUDY}"]


def test_a_series_rendered_renders_its_first_kept_instance_with_one_image_type():
    pacs = Pacs()
    body, data = asyncio.run(
        answer(
            retrieval(pacs),
            f"studies/{STUDY}/series/1.1/rendered",
            accept="image/png;q=0.5, */*",
            query="viewport=64,64",
        )
    )
    assert pacs.asked == [f"studies/{STUDY}/series/1.1/instances/1.1.2/rendered?viewport=64,64"]
    assert (body.content_type, data, body.rewritten) == ("image/jpeg", b"\xff\xd8jpeg", False)


def test_a_json_answer_past_the_bound_is_refused():
    with pytest.raises(UpstreamBadResponse):
        asyncio.run(
            answer(retrieval(Pacs(), max_json=100), f"studies/{STUDY}/metadata", accept="application/dicom+json")
        )
