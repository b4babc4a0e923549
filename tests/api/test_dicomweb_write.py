"""app.pacs.dicomweb_write: STOW-RS and WADO-RS metadata against a mocked PACS (respx router in an httpx.MockTransport).

Checked on the wire: the multipart/related body (read back with the standard library's MIME parser), the headers,
Basic credentials from the URL; on the way back: 200/202/409/500 answers, garbage, transport errors, and that no
error message names the PACS or its credentials. Each test drives its own event loop (asyncio.run).
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import json
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import httpx
import pytest
import respx

from app.errors import UpstreamBadResponse, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from app.pacs.dicomweb_write import DicomWebStore, StowRefused, StowResult

PACS = "http://pacs.test:8042/dicom-web"
SECRET_PACS = "http://alice:s%3Acret@pacs.test:8042/dicom-web/"
TIMEOUT = httpx.Timeout(5.0, connect=2.0)
STUDY, SERIES = "2.25.100", "2.25.100.9"
METADATA_URL = f"{PACS}/studies/{STUDY}/series/{SERIES}/metadata"
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make(router: respx.MockRouter, base: str = PACS) -> DicomWebStore:
    return DicomWebStore(httpx.MockTransport(router.handler), base, TIMEOUT)


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(using=None, assert_all_called=False)


def sop_item(uid: str, **extra: Any) -> dict[str, Any]:
    item = {
        "00081150": {"vr": "UI", "Value": [KOS_CLASS]},
        "00081155": {"vr": "UI", "Value": [uid]},
        # Orthanc adds RetrieveURL: the PACS address, which must never reach a message.
        "00081190": {"vr": "UR", "Value": [f"{PACS}/studies/{STUDY}/series/{SERIES}/instances/{uid}"]},
    }
    item.update(extra)
    return item


def stow_answer(stored: list[str], failed: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """The Store Instances Response Module as Orthanc sends it: FailedSOPSequence always present, empty on success."""
    return {
        "00081190": {"vr": "UR", "Value": [f"{PACS}/studies/{STUDY}"]},
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [KOS_CLASS]},
                    "00081155": {"vr": "UI", "Value": [uid]},
                    **({"00081197": {"vr": "US", "Value": [reason]}} if reason is not None else {}),
                }
                for uid, reason in failed
            ],
        },
        "00081199": {"vr": "SQ", "Value": [sop_item(uid) for uid in stored]},
    }


def assert_hides_the_pacs(exc: BaseException) -> None:
    text = f"{exc} {getattr(exc, 'message', '')}"
    for secret in ("pacs.test", "8042", "dicom-web", "alice", "cret"):
        assert secret not in text, text


# -- STOW-RS request -------------------------------------------------------------------------------------------


class TestStowRequest:
    def test_multipart_body(self, router: respx.MockRouter) -> None:
        route = router.post(f"{PACS}/studies").respond(200, json=stow_answer(["2.25.1", "2.25.2"]))
        parts = [b"\x00" * 128 + b"DICM first", b"\x00" * 128 + b"DICM second\r\n--not-a-boundary"]
        result = run(make(router).store(parts))
        assert result == StowResult(stored=("2.25.1", "2.25.2"), failed=(), warning=False)

        request = route.calls.last.request
        assert request.method == "POST"
        assert request.headers["accept"] == "application/dicom+json"
        content_type = request.headers["content-type"]
        assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
        boundary = content_type.rsplit("boundary=", 1)[1]
        body = request.content
        assert int(request.headers["content-length"]) == len(body)
        # RFC 2046 framing, byte for byte ...
        assert body.startswith(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        assert body.endswith(f"\r\n--{boundary}--\r\n".encode())
        assert body.count(f"--{boundary}".encode()) == len(parts) + 1
        # ... and as an independent MIME parser reads it.
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        assert message.get_content_type() == "multipart/related"
        assert message.get_param("type") == "application/dicom"
        got = [(part.get_content_type(), part.get_payload(decode=True)) for part in message.iter_parts()]
        assert got == [("application/dicom", part) for part in parts]

    def test_the_boundary_never_occurs_in_a_part(
        self, router: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        tokens = iter(["aaaa", "bbbb"])
        monkeypatch.setattr("app.pacs.dicomweb_write.secrets.token_hex", lambda _n: next(tokens))
        route = router.post(f"{PACS}/studies").respond(200, json=stow_answer(["2.25.1"]))
        run(make(router).store([b"xx--aaaa--xx"]))
        assert route.calls.last.request.headers["content-type"].endswith("boundary=bbbb")

    def test_timeout_travels_with_the_request(self, router: respx.MockRouter) -> None:
        route = router.post(f"{PACS}/studies").respond(200, json=stow_answer(["2.25.1"]))
        run(make(router).store([b"x"]))
        assert route.calls.last.request.extensions["timeout"] == TIMEOUT.as_dict()

    def test_basic_auth_from_userinfo(self, router: respx.MockRouter) -> None:
        route = router.post(f"{PACS}/studies").respond(200, json=stow_answer(["2.25.1"]))
        store = make(router, SECRET_PACS)
        run(store.store([b"x"]))
        request = route.calls.last.request
        assert request.headers["authorization"] == "Basic " + base64.b64encode(b"alice:s:cret").decode()
        assert str(request.url) == f"{PACS}/studies"  # no userinfo in the URL itself
        assert store.requests == 1

    def test_nothing_to_store(self, router: respx.MockRouter) -> None:
        store = make(router)
        with pytest.raises(ValueError, match="nothing to store"):
            run(store.store([]))
        assert store.requests == 0


# -- STOW-RS response ------------------------------------------------------------------------------------------


class TestStowResponse:
    def store(self, router: respx.MockRouter, response: httpx.Response, base: str = PACS) -> StowResult:
        router.post(f"{PACS}/studies").mock(return_value=response)
        return run(make(router, base).store([b"part"]))

    def test_202_with_failures(self, router: respx.MockRouter) -> None:
        answer = stow_answer(["2.25.1"], failed=[("2.25.2", 0xA700), ("2.25.3", None)])
        result = self.store(router, httpx.Response(202, json=answer))
        assert result == StowResult(stored=("2.25.1",), failed=(("2.25.2", 0xA700), ("2.25.3", None)), warning=True)

    def test_202_alone_is_a_warning(self, router: respx.MockRouter) -> None:
        assert self.store(router, httpx.Response(202, json=stow_answer(["2.25.1"]))).warning

    def test_warning_reason_on_a_stored_instance(self, router: respx.MockRouter) -> None:
        answer = stow_answer([])
        answer["00081199"]["Value"] = [sop_item("2.25.1", **{"00081196": {"vr": "US", "Value": [0xB000]}})]
        result = self.store(router, httpx.Response(200, json=answer))
        assert result == StowResult(stored=("2.25.1",), failed=(), warning=True)

    @pytest.mark.parametrize(("reason", "read"), [("0xC000", 0xC000), ("272", 272), ("bad", None), (True, None)])
    def test_failure_reason_spellings(self, router: respx.MockRouter, reason: Any, read: int | None) -> None:
        answer = stow_answer([], failed=[("2.25.2", reason)])
        assert self.store(router, httpx.Response(202, json=answer)).failed == (("2.25.2", read),)

    def test_an_answer_wrapped_in_a_list(self, router: respx.MockRouter) -> None:
        result = self.store(router, httpx.Response(200, json=[stow_answer(["2.25.1"])]))
        assert result.stored == ("2.25.1",)

    def test_an_answer_without_sequences(self, router: respx.MockRouter) -> None:
        # Nothing reported stored: the caller, who knows what it sent, sees that its UIDs are missing.
        assert self.store(router, httpx.Response(200, json={})) == StowResult((), (), False)

    def test_409_names_status_and_reasons(self, router: respx.MockRouter) -> None:
        answer = stow_answer([], failed=[("2.25.1", 0xC000), ("2.25.2", 0xA900), ("2.25.3", 0xC000)])
        with pytest.raises(UpstreamBadResponse) as info:
            self.store(router, httpx.Response(409, json=answer), SECRET_PACS)
        assert (
            info.value.message == "the PACS refused to store the instances (HTTP 409; failure reasons 0xA900, 0xC000)"
        )
        assert info.value.status == 502
        assert isinstance(info.value, StowRefused) and info.value.result is not None
        assert [uid for uid, _ in info.value.result.failed] == ["2.25.1", "2.25.2", "2.25.3"]
        assert_hides_the_pacs(info.value)

    def test_a_refusal_that_stored_some(self, router: respx.MockRouter) -> None:
        # Orthanc's answer to one readable and one unreadable part: 400, no content type, the readable one stored
        # and listed, the other in neither sequence.
        answer = stow_answer(["2.25.1"])
        response = httpx.Response(400, content=json.dumps(answer).encode())
        with pytest.raises(StowRefused) as info:
            self.store(router, response, SECRET_PACS)
        assert info.value.message == "the PACS refused to store the instances (HTTP 400; 1 stored nonetheless)"
        assert info.value.result == StowResult(stored=("2.25.1",), failed=(), warning=False)
        assert_hides_the_pacs(info.value)

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 415, 500, 503])
    def test_other_errors(self, router: respx.MockRouter, status: int) -> None:
        body = f"<html>Error at {PACS} for alice</html>"
        with pytest.raises(StowRefused, match=f"HTTP {status}\\)") as info:
            self.store(router, httpx.Response(status, text=body), SECRET_PACS)
        assert info.value.result is None
        assert_hides_the_pacs(info.value)

    @pytest.mark.parametrize(
        "body",
        [b"", b"not json", b"[1, 2]", b'"text"', b"[{}, {}]", f"<html>{PACS}</html>".encode()],
        ids=["empty", "text", "numbers", "string", "two datasets", "html"],
    )
    def test_garbage_with_200(self, router: respx.MockRouter, body: bytes) -> None:
        with pytest.raises(UpstreamBadResponse, match="without DICOM JSON") as info:
            self.store(router, httpx.Response(200, content=body), SECRET_PACS)
        assert_hides_the_pacs(info.value)

    @pytest.mark.parametrize(
        ("error", "expected"),
        [
            (httpx.ReadTimeout("read timed out"), UpstreamTimeout),
            (httpx.ConnectTimeout("connect timed out"), UpstreamTimeout),
            (httpx.ConnectError(f"cannot connect to {SECRET_PACS}"), UpstreamUnavailable),
            (httpx.RemoteProtocolError("Server disconnected without sending a response."), UpstreamUnavailable),
            (httpx.ReadError("connection reset"), UpstreamUnavailable),
        ],
    )
    def test_transport_errors_are_not_retried(
        self, router: respx.MockRouter, error: Exception, expected: type[UpstreamError]
    ) -> None:
        # A POST that broke may have been stored: sending it again is the caller's decision.
        route = router.post(f"{PACS}/studies").mock(side_effect=error)
        store = make(router, SECRET_PACS)
        with pytest.raises(expected) as info:
            run(store.store([b"part"]))
        assert route.call_count == 1 and store.requests == 1
        assert_hides_the_pacs(info.value)


# -- WADO-RS metadata ------------------------------------------------------------------------------------------


def kos_metadata(uid: str) -> dict[str, Any]:
    return {
        "00080016": {"vr": "UI", "Value": [KOS_CLASS]},
        "00080018": {"vr": "UI", "Value": [uid]},
        "0040A730": {"vr": "SQ", "Value": [{"0040A040": {"vr": "CS", "Value": ["IMAGE"]}}]},
        "7FE00010": {"vr": "OB", "BulkDataURI": f"{PACS}/bulk"},
    }


class TestSeriesMetadata:
    def test_full_dicom_json(self, router: respx.MockRouter) -> None:
        answer = [kos_metadata("2.25.1"), kos_metadata("2.25.2")]
        route = router.get(METADATA_URL).respond(200, json=answer, headers={"content-type": "application/dicom+json"})
        store = make(router)
        assert run(store.series_metadata(STUDY, SERIES)) == answer  # sequences and all, not slimmed
        request = route.calls.last.request
        assert request.headers["accept"] == "application/dicom+json"
        assert request.extensions["timeout"] == TIMEOUT.as_dict()
        assert store.requests == 1

    def test_a_single_dataset(self, router: respx.MockRouter) -> None:
        router.get(METADATA_URL).respond(200, json=kos_metadata("2.25.1"))
        assert run(make(router).series_metadata(STUDY, SERIES)) == [kos_metadata("2.25.1")]

    @pytest.mark.parametrize("status", [404, 204])
    def test_no_such_series(self, router: respx.MockRouter, status: int) -> None:
        body = {"HttpError": "Not Found", "HttpStatus": 404, "Details": "Accessing an inexistent study with WADO-RS"}
        router.get(METADATA_URL).respond(status, json=body if status == 404 else None)
        assert run(make(router).series_metadata(STUDY, SERIES)) == []

    def test_basic_auth(self, router: respx.MockRouter) -> None:
        route = router.get(METADATA_URL).respond(200, json=[])
        run(make(router, SECRET_PACS).series_metadata(STUDY, SERIES))
        assert (
            route.calls.last.request.headers["authorization"] == "Basic " + base64.b64encode(b"alice:s:cret").decode()
        )

    @pytest.mark.parametrize("status", [400, 401, 500, 503])
    def test_errors(self, router: respx.MockRouter, status: int) -> None:
        router.get(METADATA_URL).respond(status, text=f"error at {PACS}")
        with pytest.raises(UpstreamBadResponse, match=f"HTTP {status}") as info:
            run(make(router, SECRET_PACS).series_metadata(STUDY, SERIES))
        assert_hides_the_pacs(info.value)

    @pytest.mark.parametrize("body", [b"not json", b"[1]", b'"x"', b""])
    def test_garbage(self, router: respx.MockRouter, body: bytes) -> None:
        router.get(METADATA_URL).respond(200, content=body)
        with pytest.raises(UpstreamBadResponse, match="not DICOM JSON"):
            run(make(router).series_metadata(STUDY, SERIES))

    @pytest.mark.parametrize("error", [httpx.RemoteProtocolError("Server disconnected"), httpx.ReadError("reset")])
    def test_one_retry_on_a_stale_keep_alive_connection(self, router: respx.MockRouter, error: Exception) -> None:
        # Orthanc closes idle keep-alive connections after 1 s; a GET that raced the close is sent once more.
        route = router.get(METADATA_URL).mock(side_effect=[error, httpx.Response(200, json=[kos_metadata("2.25.1")])])
        store = make(router)
        assert run(store.series_metadata(STUDY, SERIES)) == [kos_metadata("2.25.1")]
        assert route.call_count == 2 and store.requests == 2

    def test_only_one_retry(self, router: respx.MockRouter) -> None:
        route = router.get(METADATA_URL).mock(side_effect=httpx.RemoteProtocolError("Server disconnected"))
        store = make(router, SECRET_PACS)
        with pytest.raises(UpstreamUnavailable) as info:
            run(store.series_metadata(STUDY, SERIES))
        assert route.call_count == 2 and store.requests == 2
        assert info.value.status == 503
        assert_hides_the_pacs(info.value)

    @pytest.mark.parametrize(
        ("error", "expected"),
        [
            (httpx.ReadTimeout("timed out"), UpstreamTimeout),
            (httpx.ConnectError(f"cannot connect to {SECRET_PACS}"), UpstreamUnavailable),
        ],
    )
    def test_errors_that_are_not_retried(
        self, router: respx.MockRouter, error: Exception, expected: type[UpstreamError]
    ) -> None:
        route = router.get(METADATA_URL).mock(side_effect=error)
        with pytest.raises(expected) as info:
            run(make(router, SECRET_PACS).series_metadata(STUDY, SERIES))
        assert route.call_count == 1
        assert_hides_the_pacs(info.value)

    @pytest.mark.parametrize(
        ("study", "series"),
        [
            ("..", SERIES),
            (STUDY, "../../instances"),
            ("1.2/../3", SERIES),
            (STUDY, "1.2?includefield=all"),
            ("1.2%2F3", SERIES),
            ("1.2#x", SERIES),
            ("", SERIES),
            (STUDY, "1." + "2" * 64),
            ("01.2", SERIES),
            (STUDY, "1.2 "),
        ],
    )
    def test_uids_are_checked_before_they_reach_the_url(
        self, router: respx.MockRouter, study: str, series: str
    ) -> None:
        store = make(router)
        with pytest.raises(ValueError, match="not a DICOM UID"):
            run(store.series_metadata(study, series))
        assert store.requests == 0 and not router.calls
