"""The WADO-RS gateway against a mocked PACS: faults become OperationOutcomes, lengths are never stale, and a
client that hangs up closes the upstream answer (issue 12, Rules 2 and 5)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from app.main import create_app
from tests.api.conftest import PACS, instance_row, settings, study_row
from tests.support.fhir_check import checking_client

STUDY, SERIES, SOP = "1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1"
RETRIEVE = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
SECRET = b"http://pacs.test:8042/dicom-web/secret"


def _qido(pacs: respx.MockRouter) -> None:
    pacs.get(url__regex=rf"^{PACS}/studies\?").mock(return_value=httpx.Response(200, json=[study_row(STUDY)]))
    pacs.get(url__regex=rf"^{PACS}/instances\?").mock(
        return_value=httpx.Response(200, json=[instance_row(STUDY, SERIES, SOP)])
    )


def _client(pacs: respx.MockRouter, **overrides: Any) -> TestClient:
    app = create_app(settings(**({"upstream_retries": 0} | overrides)), transport=httpx.MockTransport(pacs.handler))
    return checking_client(app, raise_server_exceptions=False)  # type: ignore[no-any-return]


@pytest.fixture
def pacs() -> respx.MockRouter:
    router = respx.MockRouter(assert_all_called=False)
    _qido(router)
    return router


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        (httpx.Response(503, content=SECRET), 503, "transient"),
        (httpx.Response(500, content=SECRET), 502, "exception"),
        (httpx.Response(504, content=SECRET), 504, "timeout"),
        (httpx.Response(406, content=SECRET), 406, "not-supported"),  # unsupported transfer syntax: passed on
        (httpx.Response(400, content=SECRET), 400, "invalid"),
        (httpx.Response(404, content=SECRET), 404, "not-found"),
        (httpx.ConnectError("refused"), 503, "transient"),
        (httpx.ReadTimeout("slow"), 504, "timeout"),
    ],
)
def test_pacs_faults_are_operation_outcomes_that_name_no_pacs(pacs, answer, status, code) -> None:
    route = pacs.get(f"{PACS}/studies/{STUDY}/series/{SERIES}/instances/{SOP}")
    route.mock(side_effect=answer) if isinstance(answer, Exception) else route.mock(return_value=answer)
    with _client(pacs) as client:
        r = client.get(RETRIEVE, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == status
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == code
    assert b"pacs.test" not in r.content and not any("pacs.test" in v for v in r.headers.values())
    if status == 503:
        assert r.headers["retry-after"]


def test_the_upstream_asks_for_identity_and_the_accept_passes_through(pacs) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Content-Type": "image/png", "Content-Length": "4"}, content=b"\x89PNG")

    pacs.get(url__regex=rf"^{PACS}/studies/{STUDY}/series/{SERIES}/instances/{SOP}/rendered").mock(side_effect=answer)
    with _client(pacs) as client:
        r = client.get(f"{RETRIEVE}/rendered?quality=50&viewport=64,64", headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.content == b"\x89PNG"
    assert r.headers["content-length"] == "4"  # passed unchanged: the PACS's length is true
    (request,) = seen
    assert request.headers["accept-encoding"] == "identity" and request.headers["accept"] == "image/png"
    assert request.url.query == b"quality=50&viewport=64,64"


def test_a_rewritten_body_carries_no_upstream_length_or_encoding(pacs) -> None:
    body = (
        b"--B\r\nContent-Type: application/dicom\r\nContent-Location: http://orthanc:8042/dicom-web/studies/"
        + STUDY.encode()
        + b"\r\nX-Internal: http://pacs.test:8042\r\n\r\nDICM-DATA\r\n--B--\r\n"
    )
    pacs.get(f"{PACS}/studies/{STUDY}/series/{SERIES}/instances/{SOP}").mock(
        return_value=httpx.Response(
            200,
            headers={"Content-Type": "multipart/related; type=application/dicom; boundary=B", "Content-Length": "999"},
            content=body,
        )
    )
    with _client(pacs, public_url="https://imaging.example.org") as client:
        r = client.get(RETRIEVE)
    assert r.status_code == 200
    assert "content-length" not in r.headers or r.headers["content-length"] == str(len(r.content))
    assert "content-encoding" not in r.headers
    assert b"DICM-DATA" in r.content and b"pacs.test" not in r.content and b"orthanc:8042" not in r.content
    assert f"Content-Location: https://imaging.example.org/dicomweb/studies/{STUDY}".encode() in r.content


class Endless(httpx.AsyncByteStream):
    """An upstream multipart body that never ends; records how much was read and whether it was closed."""

    def __init__(self) -> None:
        self.chunks = 0
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"--B\r\nContent-Type: application/dicom\r\n\r\n"
        while True:
            self.chunks += 1
            yield b"x" * 65536
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        self.closed.set()


def test_a_client_that_hangs_up_closes_the_upstream_answer(pacs) -> None:
    stream = Endless()
    pacs.get(f"{PACS}/studies/{STUDY}/series/{SERIES}/instances/{SOP}").mock(
        return_value=httpx.Response(
            200, headers={"Content-Type": "multipart/related; type=application/dicom; boundary=B"}, stream=stream
        )
    )
    app = create_app(settings(), transport=httpx.MockTransport(pacs.handler))

    async def run() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        got_body = asyncio.Event()

        asked: list[bool] = []

        async def receive() -> dict[str, Any]:
            if not asked:
                asked.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}
            await got_body.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                got_body.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": RETRIEVE,
            "raw_path": RETRIEVE.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
        }
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app(scope, receive, send), 10)
            await asyncio.wait_for(stream.closed.wait(), 5)
        return sent

    sent = asyncio.run(run())
    assert stream.closed.is_set()
    assert stream.chunks < 100  # stopped soon after the hang-up: not the whole (endless) body
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert not any(h == b"content-length" for h, _ in sent[0]["headers"])


def test_the_breaker_and_budget_apply(pacs) -> None:
    pacs.get(f"{PACS}/studies/{STUDY}/series/{SERIES}/instances/{SOP}").mock(side_effect=httpx.ConnectError("down"))
    with _client(pacs, breaker_failures=2) as client:
        statuses = [client.get(RETRIEVE).status_code for _ in range(4)]
        metrics = client.get("/metrics").text
    assert statuses == [503, 503, 503, 503]
    assert 'facade_upstream_requests_total{kind="wado",outcome="rejected"}' in metrics
