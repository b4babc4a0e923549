"""A tiny IHE PIXm (ITI-83, Mobile Patient Identifier Cross-reference Query) manager for tests.

    persons = [[("urn:oid:2.999.1.1", "N-100"), ("urn:oid:2.999.1.2", "S-200")], ...]
    with PixmServer(persons) as pix:        # Starlette + uvicorn in a thread, 127.0.0.1, a free port
        pix.base                            # http://127.0.0.1:<port>/fhir  (the facade's pixm_url)
        httpx.get(pix.base + "/Patient/$ihe-pix", params={"sourceIdentifier": "urn:oid:2.999.1.1|N-100"})
        pix.requests                        # $ihe-pix requests answered so far (to check a client's cache)
        pix.set_mode("error")               # "ok" | "error" (500) | "hang" (held until the mode changes or stop)

``GET {base}/Patient/$ihe-pix?sourceIdentifier=<system>|<value>[&targetSystem=<uri>]`` (ITI-83, PIXm 3.0):

- 200 ``Parameters``: one ``targetIdentifier`` (valueIdentifier {system, value}) per *other* identifier of the same
  person, only those in the targetSystem(s) when given (repeated or comma-separated), and one ``targetId``
  (valueReference ``Patient/<person id>``) when any identifier is returned; no ``parameter`` at all otherwise.
- 404 OperationOutcome ``not-found``: the system is known, the identifier is not (ITI-83 case 3).
- 400 OperationOutcome: sourceIdentifier missing, repeated, without ``|``, or in a system no person has an
  identifier in (``code-invalid``, "sourceIdentifier Assigning Authority not found", case 4).
- 403 OperationOutcome ``code-invalid``: a targetSystem no person has an identifier in (case 5).

The server runs in a thread of the test process (unlike tests.support.ehr's subprocess) so that counters and
modes are plain attributes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Literal

__all__ = ["HOLD_AT_MOST", "PixmMode", "PixmServer", "create_app"]

PixmMode = Literal["ok", "error", "hang"]
HOLD_AT_MOST = 60.0  # a held ("hang") request is let go after this long even if nobody releases it
FHIR_JSON = "application/fhir+json"


def _outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


class PixmServer:
    """``persons``: each a list of (system, value) identifiers of one person; ``ids``: their Patient ids (default
    ``person-1``, ``person-2``, ...)."""

    def __init__(self, persons: Iterable[Sequence[tuple[str, str]]], *, ids: Sequence[str] | None = None) -> None:
        self.persons: list[tuple[tuple[str, str], ...]] = [tuple((s, v) for s, v in p) for p in persons]
        self.ids: list[str] = list(ids) if ids is not None else [f"person-{i}" for i in range(1, len(self.persons) + 1)]
        if len(self.ids) != len(self.persons):
            raise ValueError("one id per person")
        self.index: dict[tuple[str, str], int] = {}
        for n, person in enumerate(self.persons):
            for ident in person:
                if ident in self.index:
                    raise ValueError(f"identifier {ident} given to two persons")
                self.index[ident] = n
        self.systems: frozenset[str] = frozenset(s for p in self.persons for s, _ in p)
        self.mode: PixmMode = "ok"
        self.requests = 0  # $ihe-pix requests received (in any mode)
        self.queries: list[str] = []  # their sourceIdentifier values, in order ("" when missing)
        self._lock = threading.Lock()
        self._stopping = False
        self._sock: socket.socket | None = None
        self._server: Any = None  # uvicorn.Server
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # -- public surface ------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("PixmServer is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        """The FHIR base, ``http://127.0.0.1:<port>/fhir`` (the operation is ``{base}/Patient/$ihe-pix``)."""
        return self.url + "/fhir"

    def set_mode(self, mode: PixmMode) -> None:
        if mode not in ("ok", "error", "hang"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = 0
            self.queries.clear()

    def start(self) -> PixmServer:
        import uvicorn

        if self._thread is not None:
            raise RuntimeError("PixmServer already started")
        # Bound here, before uvicorn starts: no race for the port.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self),
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            http="h11",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="pixm", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the PIXm test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Release held requests, stop uvicorn, join its thread. Safe to call twice."""
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> PixmServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the operation -------------------------------------------------------------------------------------------

    def answer(self, source: list[str], targets: list[str]) -> tuple[int, dict[str, Any]]:
        """(status, body) of ``$ihe-pix`` for the sourceIdentifier and targetSystem query values."""
        if len(source) != 1:
            return 400, _outcome("required", "exactly one sourceIdentifier is required")
        system, bar, value = source[0].partition("|")
        if not bar or not system or not value:
            return 400, _outcome("invalid", "sourceIdentifier must be <system>|<value>")
        if system not in self.systems:
            return 400, _outcome("code-invalid", "sourceIdentifier Assigning Authority not found")
        wanted = {t for raw in targets for t in raw.split(",") if t}
        unknown = sorted(wanted - self.systems)
        if unknown:
            return 403, _outcome("code-invalid", f"targetSystem not found: {', '.join(unknown)}")
        n = self.index.get((system, value))
        if n is None:
            return 404, _outcome("not-found", "sourceIdentifier Patient Identifier not found")
        others = [(s, v) for s, v in self.persons[n] if (s, v) != (system, value) and (not wanted or s in wanted)]
        parameters: list[dict[str, Any]] = [
            {"name": "targetIdentifier", "valueIdentifier": {"system": s, "value": v}} for s, v in others
        ]
        if parameters:
            parameters.append({"name": "targetId", "valueReference": {"reference": f"Patient/{self.ids[n]}"}})
        body: dict[str, Any] = {"resourceType": "Parameters"}
        if parameters:
            body["parameter"] = parameters
        return 200, body

    async def _hold(self) -> None:
        deadline = time.monotonic() + HOLD_AT_MOST
        while self.mode == "hang" and not self._stopping and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


def create_app(pix: PixmServer) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ihe_pix(request: Request) -> JSONResponse:
        source = request.query_params.getlist("sourceIdentifier")
        with pix._lock:
            pix.requests += 1
            pix.queries.append(source[0] if source else "")
        if pix.mode == "hang":
            await pix._hold()
            return JSONResponse(_outcome("transient", "held, then released"), 503, media_type=FHIR_JSON)
        if pix.mode == "error":
            return JSONResponse(_outcome("exception", "simulated failure"), 500, media_type=FHIR_JSON)
        status, body = pix.answer(source, request.query_params.getlist("targetSystem"))
        return JSONResponse(body, status, media_type=FHIR_JSON)

    return Starlette(routes=[Route("/fhir/Patient/$ihe-pix", ihe_pix, methods=["GET"])])
