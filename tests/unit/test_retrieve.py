"""app.usecases.retrieve.Retrieval on plain values: a fake facade (the study's row, instance rows and rejected
SOP Instance UIDs) and a fake WADO upstream that answers by path with app.pacs.wado.WadoAnswer objects over
recording streams, so each test sees what the PACS was asked (path, Accept, query, own budget) and whether every
upstream answer was closed.

The rules are the module docstring's: Rule 1 (authorization of the study; nothing outside its rows is asked for),
Rule 2 (multipart re-wrapped as it streams; JSON read whole within MAX_JSON_BYTES), Rule 3 (nothing points at the
PACS) and Rule 4 (IOCM). The neighbouring tests/unit/test_retrieval.py covers study-level metadata, the study
retrieve made of clean units and the QIDO scope keys over a MockTransport.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from app.dicom import dicom_json as dj
from app.dicom.wado_rewrite import parse_wado_path
from app.errors import NotAcceptable, NotFound, UpstreamBadResponse, UpstreamUnavailable
from app.fhir import patient_ids
from app.pacs.federation import WadoSource
from app.pacs.wado import WadoAnswer
from app.usecases.retrieve import Body, Retrieval
from tests.unit.helpers import Stream

PACS = "http://pacs.internal:8042/dicom-web"
PUBLIC = "https://img.example/wado/c/cap123"
STUDY = "1.2.3"
DICOM = 'multipart/related; type="application/dicom"'
JSON = "application/dicom+json"


def row(series: str, sop: str, number: int) -> dj.Dataset:
    return {
        dj.STUDY_UID: (STUDY,),
        dj.SERIES_UID: (series,),
        dj.SOP_INSTANCE_UID: (sop,),
        dj.INSTANCE_NUMBER: (number,),
    }


# Series 1.1: 1.1.1 (#1, rejected by default), 1.1.2 (#3), 1.1.3 (#2); series 1.2: 1.2.1.
ROWS = [row("1.1", "1.1.1", 1), row("1.1", "1.1.2", 3), row("1.1", "1.1.3", 2), row("1.2", "1.2.1", 1)]


class Facade:
    """app.usecases.service.Facade.retrievable: 404 for an unknown study or another patient's."""

    def __init__(self, rejected: frozenset[str]) -> None:
        self.rejected = rejected
        self.asked: list[tuple[str, str | None]] = []

    async def retrievable(self, uid: str, *, patient: str | None) -> tuple[dj.Dataset, list[dj.Dataset], Any]:
        self.asked.append((uid, patient))
        if uid != STUDY or patient not in (None, "p1"):
            raise NotFound("no such study")
        row = {dj.STUDY_UID: (STUDY,), dj.PATIENT_ID: ("MRN1",), dj.ISSUER_OF_PATIENT_ID: ("HOSP-A",)}
        return row, ROWS, self.rejected


@dataclass
class Call:
    path: str
    accept: str | None
    query: str
    own_budget: bool


@dataclass
class Wado:
    """The PACS side of app.pacs.wado.WadoUpstream.open: an answer per path (404 for any other)."""

    answers: dict[str, tuple[int, dict[str, str], list[bytes]]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)

    def on(self, path: str, status: int = 200, headers: dict[str, str] | None = None, *chunks: bytes) -> None:
        self.answers[path] = (status, headers or {}, list(chunks))

    async def open(self, path: str, *, accept: str | None, query: str = "", own_budget: bool = False) -> WadoAnswer:
        self.calls.append(Call(path, accept, query, own_budget))
        status, headers, chunks = self.answers.get(path, (404, {}, [b'{"HttpError": "Not Found"}']))
        stream = Stream(chunks)
        self.streams.append(stream)
        return WadoAnswer(httpx.Response(status, headers=headers, stream=stream))

    @property
    def paths(self) -> list[str]:
        return [c.path for c in self.calls]

    @property
    def all_closed(self) -> bool:
        return all(s.closed for s in self.streams)


def multipart(boundary: str, *parts: tuple[list[tuple[str, str]], bytes]) -> bytes:
    out = b""
    for headers, data in parts:
        out += f"--{boundary}\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n"
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def instance_part(sop: str) -> tuple[list[tuple[str, str]], bytes]:
    return [("Content-Type", "application/dicom")], f"DICM {sop}".encode()


def serve_instances(wado: Wado, *paths_and_sops: tuple[str, str]) -> None:
    for path, sop in paths_and_sops:
        wado.on(path, 200, {"content-type": f"{DICOM}; boundary=B{sop}"}, multipart(f"B{sop}", instance_part(sop)))


def setup(rejected: frozenset[str] = frozenset({"1.1.1"}), **kw: Any) -> tuple[Retrieval, Facade, Wado]:
    facade, wado = Facade(rejected), Wado()
    return Retrieval(facade, [WadoSource("pacs", None, wado)], **kw), facade, wado  # type: ignore[arg-type]


async def open_body(r: Retrieval, path: str, *, accept: str | None = DICOM, query: str = "") -> Body:
    target = parse_wado_path(path)
    assert target is not None, path
    study = await r.study(STUDY, patient="p1")
    return await r.body(target, study, accept=accept, query=query, public_base=PUBLIC)


def fetch(r: Retrieval, path: str, **kw: Any) -> tuple[Body, bytes]:
    async def go() -> tuple[Body, bytes]:
        body = await open_body(r, path, **kw)
        return body, b"".join([c async for c in body.chunks])

    return asyncio.run(go())


def boundary(body: Body) -> str:
    assert body.content_type is not None
    return body.content_type.rsplit("boundary=", 1)[1]


class TestAuthorization:
    @pytest.mark.parametrize(("uid", "patient"), [("9.9.9", None), (STUDY, "p2")])
    def test_an_unknown_or_another_patients_study_is_404_before_the_pacs_is_asked(self, uid: str, patient: str | None):
        # Rule 1: the same test as an ImagingStudy read, with the caller's patient context passed down.
        r, facade, wado = setup()
        with pytest.raises(NotFound):
            asyncio.run(r.study(uid, patient=patient))
        assert facade.asked == [(uid, patient)] and wado.calls == []

    def test_the_authorized_study_names_its_subject_as_the_fhir_patient_id(self):
        # The audit line says Patient/{id}: the same id the FHIR API gives that patient (PatientID + issuer).
        r, _, _ = setup()
        study = asyncio.run(r.study(STUDY, patient=None))
        assert study.patient == patient_ids.encode("MRN1", "HOSP-A")
        assert study.instances == tuple(ROWS) and study.rejected == {"1.1.1"}

    @pytest.mark.parametrize(
        "path",
        [
            f"studies/{STUDY}/series/7.7/metadata",  # no such series in the study's rows
            f"studies/{STUDY}/series/7.7/rendered",
            f"studies/{STUDY}/series/1.1/instances/7.7/frames/1/rendered",  # no such instance
            f"studies/{STUDY}/series/1.1/instances/1.2.1/bulk/7fe00010",  # an instance of the other series
            f"studies/{STUDY}/series/1.1/instances/1.1.1/bulk/7fe00010",  # Rule 4: a rejected instance's route
        ],
    )
    def test_a_series_or_instance_outside_the_study_rows_is_404_without_asking_the_pacs(self, path: str):
        r, _, wado = setup()
        with pytest.raises(NotFound):
            fetch(r, path)
        assert wado.calls == []

    @pytest.mark.parametrize("path", [f"studies/{STUDY}/series/1.1", f"studies/{STUDY}/series/1.1/rendered"])
    def test_a_series_whose_every_instance_is_rejected_is_404_without_asking_the_pacs(self, path: str):
        r, _, wado = setup(rejected=frozenset({"1.1.1", "1.1.2", "1.1.3"}))
        with pytest.raises(NotFound):
            fetch(r, path)
        assert wado.calls == []


class TestJson:
    def test_series_metadata_leaves_out_rejected_instances_and_datasets_of_other_series(self):
        r, _, wado = setup()
        datasets = [
            {
                "0020000E": {"vr": "UI", "Value": [series]},
                "00080018": {"vr": "UI", "Value": [sop]},
                "7FE00010": {"vr": "OB", "BulkDataURI": f"{PACS}/studies/{STUDY}/series/{series}/instances/{sop}"},
            }
            for series, sop in (("1.1", "1.1.1"), ("1.1", "1.1.2"), ("1.2", "1.2.1"))
        ]
        wado.on(f"studies/{STUDY}/series/1.1/metadata", 200, {"content-type": JSON}, orjson.dumps(datasets))
        _, data = fetch(r, f"studies/{STUDY}/series/1.1/metadata", query="ignored=1")
        out = orjson.loads(data)
        assert [d["00080018"]["Value"] for d in out] == [["1.1.2"]]
        assert out[0]["7FE00010"]["BulkDataURI"] == f"{PUBLIC}/studies/{STUDY}/series/1.1/instances/1.1.2"
        assert wado.calls[0].query == "" and b"pacs.internal" not in data  # metadata takes no query

    def test_a_json_answer_may_be_as_large_as_the_bound_and_not_one_byte_more(self):
        payload = orjson.dumps([{"00080018": {"vr": "UI", "Value": ["1.2.1"]}}])
        for limit, ok in ((len(payload), True), (len(payload) - 1, False)):
            r, _, wado = setup(max_json_bytes=limit)
            half = len(payload) // 2
            wado.on(f"studies/{STUDY}/metadata", 200, {"content-type": JSON}, payload[:half], payload[half:])
            if ok:
                assert orjson.loads(fetch(r, f"studies/{STUDY}/metadata")[1]) == orjson.loads(payload)
            else:
                with pytest.raises(UpstreamBadResponse):
                    fetch(r, f"studies/{STUDY}/metadata")
            assert wado.all_closed, limit

    def test_a_pacs_answer_that_is_not_json_is_a_bad_upstream_response(self):
        r, _, wado = setup()
        wado.on(f"studies/{STUDY}/metadata", 200, {"content-type": JSON}, b"<html>proxy error</html>")
        with pytest.raises(UpstreamBadResponse) as caught:
            fetch(r, f"studies/{STUDY}/metadata")
        assert caught.value.status == 502 and "proxy" not in str(caught.value)


class TestMultipart:
    def test_frames_are_rewrapped_with_gateway_locations_and_content_headers_only(self):
        # Rule 2: a new boundary, the data unchanged, no Content-Length for the re-wrapped body; Rule 3: each part's
        # Content-Location points at the gateway, or is left out when it cannot be placed; headers that are not
        # content headers never reach the client.
        r, _, wado = setup()
        frames = f"studies/{STUDY}/series/1.2/instances/1.2.1/frames/1,2"
        upstream_type = 'multipart/related; type="application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"'
        raw = multipart(
            "B0",
            (
                [
                    ("Content-Type", "application/octet-stream"),
                    ("Content-Length", "4"),
                    ("Content-Location", f"{PACS}/{frames[:-2]}"),
                    ("X-Orthanc-Path", "/var/lib/orthanc/db/ab/cd"),
                ],
                b"AAAA",
            ),
            ([("Content-Type", "application/octet-stream"), ("Content-Location", "file:///var/x")], b"BB\r\nB"),
        )
        chunks = [raw[i : i + 7] for i in range(0, len(raw), 7)]  # split anywhere, delimiters included
        wado.on(
            frames, 200, {"content-type": f"{upstream_type}; boundary=B0", "content-length": str(len(raw))}, *chunks
        )
        body, data = fetch(r, frames, accept='multipart/related; type="application/octet-stream"; transfer-syntax=*')
        b = boundary(body)
        assert b != "B0" and body.content_type == f"{upstream_type}; boundary={b}"
        assert body.length is None and body.status == 200
        assert (
            data
            == (
                f"--{b}\r\nContent-Type: application/octet-stream\r\nContent-Length: 4\r\n"
                f"Content-Location: {PUBLIC}/{frames[:-2]}\r\n\r\nAAAA\r\n"
                f"--{b}\r\nContent-Type: application/octet-stream\r\n\r\nBB\r\nB\r\n"
                f"--{b}--\r\n"
            ).encode()
        )
        assert wado.calls[0].accept == 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
        assert wado.all_closed

    def test_a_series_retrieve_with_a_rejected_instance_is_its_other_instances_one_by_one(self):
        # Rule 4, at series level; every request after the first has its own budget (app.pacs.wado: the request's
        # budget bounds the wait for the first headers; a long series outlives it by design).
        r, _, wado = setup()
        series = f"studies/{STUDY}/series/1.1"
        serve_instances(wado, (f"{series}/instances/1.1.2", "1.1.2"), (f"{series}/instances/1.1.3", "1.1.3"))
        body, data = fetch(r, series)
        assert [(c.path, c.accept, c.own_budget) for c in wado.calls] == [
            (f"{series}/instances/1.1.2", DICOM, False),
            (f"{series}/instances/1.1.3", DICOM, True),
        ]
        b = boundary(body).encode()
        assert data.count(b"--" + b + b"\r\n") == 2 and data.endswith(b"--" + b + b"--\r\n")
        assert b"DICM 1.1.2" in data and b"DICM 1.1.3" in data and b"1.1.1" not in data
        assert b"B1.1.2" not in data and body.length is None and wado.all_closed

    def test_an_instance_deleted_since_the_rows_were_read_is_skipped(self):
        # Rule 4 note in _rewrapped: a later unit that is gone (404) is left out, the body stays well-formed.
        r, _, wado = setup()
        serve_instances(wado, (f"studies/{STUDY}/series/1.1/instances/1.1.2", "1.1.2"))
        wado.on(f"studies/{STUDY}/series/1.2", 200, {"content-type": f"{DICOM}; boundary=Bs"}, multipart("Bs"))
        # 1.1.3 is not served: 404. Study units: 1.1.2, 1.1.3, then series 1.2 whole.
        body, data = fetch(r, f"studies/{STUDY}")
        assert wado.paths == [
            f"studies/{STUDY}/series/1.1/instances/1.1.2",
            f"studies/{STUDY}/series/1.1/instances/1.1.3",
            f"studies/{STUDY}/series/1.2",
        ]
        b = boundary(body).encode()
        assert data.count(b"--" + b + b"\r\n") == 1 and data.endswith(b"--" + b + b"--\r\n") and wado.all_closed

    def test_a_later_unit_that_fails_cuts_the_body_without_a_close_delimiter(self):
        # A client must see a cut body, never a well-formed one with parts silently missing.
        r, _, wado = setup()
        series = f"studies/{STUDY}/series/1.1"
        serve_instances(wado, (f"{series}/instances/1.1.2", "1.1.2"))
        wado.on(f"{series}/instances/1.1.3", 503, {}, b"busy")
        received: list[bytes] = []

        async def go() -> None:
            body = await open_body(r, series)
            async for chunk in body.chunks:
                received.append(chunk)

        with pytest.raises(UpstreamUnavailable):
            asyncio.run(go())
        assert b"DICM 1.1.2" in b"".join(received) and not b"".join(received).endswith(b"--\r\n")
        assert wado.all_closed

    def test_a_client_that_stops_reading_closes_the_pacs_answer(self):
        r, _, wado = setup(rejected=frozenset())
        wado.on(
            f"studies/{STUDY}",
            200,
            {"content-type": f"{DICOM}; boundary=Bx"},
            *[b"--Bx\r\n\r\n", b"part one", b"\r\n--Bx\r\n\r\n", b"part two", b"\r\n--Bx--\r\n"],
        )

        async def go() -> bytes:
            body = await open_body(r, f"studies/{STUDY}")
            first = await body.chunks.__anext__()
            await body.chunks.aclose()  # the client hung up
            return first

        assert asyncio.run(go()).startswith(b"--") and wado.all_closed

    def test_a_several_request_retrieve_whose_first_answer_is_not_multipart_is_refused(self):
        r, _, wado = setup()
        wado.on(f"studies/{STUDY}/series/1.1/instances/1.1.2", 200, {"content-type": "application/dicom"}, b"DICM")
        with pytest.raises(UpstreamBadResponse):
            fetch(r, f"studies/{STUDY}/series/1.1")
        assert len(wado.calls) == 1 and wado.all_closed

    def test_a_single_part_instance_answer_passes_unchanged_with_its_length(self):
        r, _, wado = setup()
        path = f"studies/{STUDY}/series/1.2/instances/1.2.1"
        wado.on(path, 200, {"content-type": "application/dicom", "content-length": "4"}, b"DI", b"CM")
        body, data = fetch(r, path)
        assert (body.content_type, body.length, body.rewritten, data) == ("application/dicom", "4", False, b"DICM")


class TestRendered:
    def test_a_study_rendered_holding_a_rejected_instance_renders_the_first_kept_one_by_instance_number(self):
        # Rule 4: study/series rendered render the first instance that is not rejected, in (series, number)
        # order: 1.1.3 is #2, 1.1.2 is #3, so 1.1.3, although its row comes later. One image type to the PACS.
        r, _, wado = setup()
        kept = f"studies/{STUDY}/series/1.1/instances/1.1.3/rendered"
        wado.on(kept, 200, {"content-type": "image/png", "content-length": "3"}, b"PNG")
        body, data = fetch(r, f"studies/{STUDY}/rendered", accept="image/webp, image/png;q=0.8, */*;q=0.1")
        assert wado.calls == [Call(kept, "image/png", "", False)]
        assert (body.content_type, body.length, body.rewritten, data) == ("image/png", "3", False, b"PNG")


class TestClosingOnRefusal:
    @pytest.mark.parametrize(
        ("path", "status", "error"),
        [
            (f"studies/{STUDY}/metadata", 404, NotFound),
            (f"studies/{STUDY}/series/1.2/rendered", 406, NotAcceptable),
            (f"studies/{STUDY}/series/1.2/instances/1.2.1", 406, NotAcceptable),
        ],
        ids=["metadata", "rendered", "retrieve"],
    )
    def test_a_pacs_refusal_is_raised_and_its_answer_closed(self, path: str, status: int, error: type[Exception]):
        r, _, wado = setup()
        wado.on(path, status, {"content-type": "application/json"}, b'{"HttpError": "..."}')
        with pytest.raises(error):
            fetch(r, path)
        assert len(wado.calls) == 1 and wado.all_closed

    @pytest.mark.parametrize(
        ("path", "content_type", "data"),
        [
            (f"studies/{STUDY}/series/1.2/instances/1.2.1", f"{DICOM}; boundary=Bi", multipart("Bi", ([], b"D"))),
            (f"studies/{STUDY}/series/1.2/instances/1.2.1/rendered", "image/jpeg", b"JPEG"),
        ],
        ids=["multipart", "rendered"],
    )
    def test_closing_a_body_before_its_first_chunk_closes_the_pacs_answer(
        self, path: str, content_type: str, data: bytes
    ):
        r, _, wado = setup()
        wado.on(path, 200, {"content-type": content_type}, data)

        async def go() -> None:
            body = await open_body(r, path)
            await body.chunks.aclose()

        asyncio.run(go())
        assert len(wado.calls) == 1 and wado.all_closed
