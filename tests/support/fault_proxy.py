"""A TCP proxy in front of a real upstream (an Orthanc) whose behaviour can be switched, for fault tests.

    with FaultProxy(orthanc.dicomweb_url) as proxy:   # 127.0.0.1, a free port, its own thread and event loop
        proxy.url            # http://127.0.0.1:<port>
        proxy.dicomweb_url   # proxy.url + the upstream URL's path ("/dicom-web")
        proxy.set_mode("refuse")    # the listening socket is closed: connects are refused
        proxy.set_mode("hang")      # connections are accepted, requests read, nothing ever answered
        proxy.set_mode("garbage")   # every request: 200, application/dicom+json, a body that is not JSON; then close
        proxy.set_mode("pass")      # bytes forwarded both ways (listening again on the same port)

A mode applies to connections accepted after :meth:`FaultProxy.set_mode`; connections open at a switch are closed,
so a client's pooled keep-alive connection cannot carry on in the old mode. ``accepted`` counts connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = ["GARBAGE_BODY", "MODES", "FaultProxy", "Mode"]

Mode = Literal["pass", "refuse", "hang", "garbage"]
MODES: tuple[Mode, ...] = ("pass", "refuse", "hang", "garbage")
GARBAGE_BODY = b"<html><body><h1>502 Bad Gateway</h1> this is not DICOM JSON</body></html>"
_MAX_HEADER = 64 * 1024


class FaultProxy:
    """``upstream``: the real server's URL (``http://127.0.0.1:8042/dicom-web``; only host, port and path are used)."""

    def __init__(self, upstream: str, *, mode: Mode = "pass") -> None:
        parts = urlsplit(upstream)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream needs a host and a port: {upstream!r}")
        self._upstream = (parts.hostname, parts.port)
        self._path = parts.path.rstrip("/")
        self._mode: Mode = mode
        self._port: int | None = None
        self.accepted = 0  # connections accepted (in any mode)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- public surface ------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The proxy's URL with the upstream URL's path, e.g. ``http://127.0.0.1:<port>/dicom-web``."""
        return self.url + self._path

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        self._call(self._switch(mode))

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection, stop the thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals (run on the proxy's loop) ---------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        # The first time on a port the kernel picks (no race), then on the same port again (SO_REUSEADDR).
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self._port or 0, reuse_address=True, backlog=64
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _close_connections(self) -> None:
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _switch(self, mode: Mode) -> None:
        self._mode = mode
        if mode == "refuse":
            await self._unlisten()
        await self._close_connections()
        if mode != "refuse":
            await self._listen()

    async def _shutdown(self) -> None:
        await self._unlisten()
        for _ in range(3):  # let accepted connections' tasks start (and register): a task cancelled before its
            await asyncio.sleep(0)  # first step never closes its StreamWriter (a ResourceWarning, an error here)
        await self._close_connections()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        for writer in list(self._writers):  # connections whose task never ran
            await _close(writer)
        self._writers.clear()
        for _ in range(3):  # let transports' scheduled connection_lost callbacks close their sockets
            await asyncio.sleep(0)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback (called as the connection is made), not a coroutine: the writer is tracked before any
        # task exists, so a connection whose task is cancelled before its first step is still closed by stop().
        self._writers.add(writer)
        self.accepted += 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, self._mode))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: Mode) -> None:
        try:
            if mode == "pass":
                await self._forward(reader, writer)
            elif mode == "garbage":
                await _garbage(reader, writer)
            else:  # "hang" (and "refuse" for a connection accepted just before the socket closed)
                while await reader.read(65536):
                    pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass  # a cancel is this proxy closing the connection (mode switch or stop): not an error
        finally:
            await _close(writer)
            self._writers.discard(writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connecting = asyncio.ensure_future(asyncio.open_connection(*self._upstream))
        try:
            up_reader, up_writer = await asyncio.shield(connecting)
        except OSError:
            return  # upstream down: the client sees its connection closed
        except asyncio.CancelledError:
            # Cancelled (a mode switch) as the connection was made: its writer must still be closed.
            connecting.add_done_callback(_close_made)
            raise
        to_upstream = asyncio.create_task(_pipe(reader, up_writer))
        to_client = asyncio.create_task(_pipe(up_reader, writer))
        try:
            done, _ = await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
            if to_client not in done and to_upstream.result():
                await to_client  # the client half-closed cleanly: let the answer through
            # else: the upstream closed (or either side failed): close both
        finally:
            up_writer.close()  # first, and without an await: a second cancel must not skip it
            for task in (to_upstream, to_client):
                task.cancel()
            await asyncio.gather(to_upstream, to_client, return_exceptions=True)
            await _close(up_writer)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> bool:
    """Copy until EOF, then half-close ``dst``; False when either side failed."""
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except OSError:
        return False
    return True


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read one HTTP request (headers and a Content-Length body), answer 200 with a non-JSON body, close."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > _MAX_HEADER:
        return
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    if length:
        await reader.readexactly(length)
    writer.write(
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/dicom+json\r\n"
        + f"Content-Length: {len(GARBAGE_BODY)}\r\n".encode("ascii")
        + b"Connection: close\r\n\r\n"
        + GARBAGE_BODY
    )
    await writer.drain()


def _close_made(made: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    if not made.cancelled() and made.exception() is None:
        made.result()[1].close()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.CancelledError):
        await writer.wait_closed()
