"""A stand-in PACS on a real socket (127.0.0.1, a thread): up, down (nothing listening) or hung (holds requests).

For the fault tests that a mock transport cannot show: connection refused, an upstream that accepts a connection
and never answers, and the same port coming back after an outage.

    with StandinPacs() as pacs:           # up: QIDO is answered at once (one study, one instance)
        pacs.down()                       # the port is closed: connection refused
        pacs.up()                         # listening again on the same port
        pacs.hang()                       # requests are accepted and held until the server stops (or up())
        pacs.requests                     # requests received so far
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import orjson

from tests.support.facade import free_port

STUDY = {
    "0020000D": {"vr": "UI", "Value": ["2.25.4242"]},
    "00100020": {"vr": "LO", "Value": ["MRN1"]},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
    "00080020": {"vr": "DA", "Value": ["20200102"]},
    "00080061": {"vr": "CS", "Value": ["CT"]},
    "00201206": {"vr": "IS", "Value": [1]},
    "00201208": {"vr": "IS", "Value": [1]},
}
INSTANCE = {
    **{tag: STUDY[tag] for tag in ("0020000D", "00100020", "00100010")},
    "0020000E": {"vr": "UI", "Value": ["2.25.4242.1"]},
    "00080018": {"vr": "UI", "Value": ["2.25.4242.1.1"]},
    "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
    "00080060": {"vr": "CS", "Value": ["CT"]},
    "00200011": {"vr": "IS", "Value": [1]},
    "00200013": {"vr": "IS", "Value": [1]},
}
HOLD_AT_MOST = 60.0  # a held request is let go after this long even if nobody releases it


class StandinPacs:
    def __init__(self) -> None:
        self.port = free_port()
        self.dicomweb_url = f"http://127.0.0.1:{self.port}/dicom-web"
        self.requests = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StandinPacs:
        self.up()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.down()

    def up(self) -> None:
        """Answer every request at once (200); starts listening again if the server was down."""
        self._release.set()
        if self._server is None:
            self._server = _Server(("127.0.0.1", self.port), _handler(self))
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
            self._thread.daemon = True
            self._thread.start()

    def hang(self) -> None:
        """Accept connections and read requests, but answer none until :meth:`up` or :meth:`down`."""
        self.up()
        self._release.clear()

    def down(self) -> None:
        """Stop listening: new connections are refused; held requests are let go (their sockets closed)."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(5)
            self._server = self._thread = None

    def _count(self) -> None:
        with self._lock:
            self.requests += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # the same port again right after down()


def _handler(pacs: StandinPacs) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: no keep-alive outlives a down()

        def do_GET(self) -> None:
            pacs._count()
            if not pacs._release.is_set():
                pacs._release.wait(HOLD_AT_MOST)
                self.close_connection = True
                return  # held, then dropped without an answer
            # QIDO-RS (PS3.18 §10.6): the one study at study level, its one instance at instance level.
            level = self.path.partition("?")[0].rstrip("/").rpartition("/")[2]
            body = orjson.dumps([STUDY] if level == "studies" else [INSTANCE] if level == "instances" else [])
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
