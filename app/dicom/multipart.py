"""multipart/related bodies of WADO-RS, parsed and written incrementally (pure; stdlib only).

PS3.18 §8.6.1.2 (Multipart Payload) carries retrieved instances, frames and bulk data as ``multipart/related``
(RFC 2387) with the MIME multipart syntax of RFC 2046 §5.1.1. The gateway re-wraps the PACS's answer part by part
(rewritten ``Content-Location``, rejected instances left out) while it streams, so nothing here ever holds a
whole part: :class:`MultipartParser` is fed the upstream chunks as they come (split anywhere) and keeps at most
a delimiter's worth of bytes between calls (a part's header block, bounded by ``max_header_bytes``, is the only
thing it gathers); :class:`MultipartWriter` produces the bytes of our own body; :func:`rewrap` ties both
together as an async generator over any async iterator of chunks (no I/O library).

Framing is by the boundary only, as RFC 2046 says: a part's ``Content-Length`` (Orthanc sends one, other PACS
do not) is a header like any other and is passed on unchanged (the data is never altered).

Orthanc 1.10 + DICOMweb 1.7 (shared/docs/wado-gateway.md §3) writes
``--B\\r\\nContent-Type: ...\\r\\nContent-Length: N\\r\\nMIME-Version: 1.0\\r\\n\\r\\n<data>\\r\\n`` per part and
``--B--\\r\\n`` at the end, with an unquoted boundary and, for frames, the transfer syntax inside the quoted
``type`` parameter (``type="application/octet-stream; transfer-syntax=..."``), which
:func:`app.dicom.media_type.parse_media_type` reads as one quoted value.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from dataclasses import dataclass

from .media_type import format_media_type, is_boundary

Headers = tuple[tuple[str, str], ...]  # part header fields in order, names as sent, values stripped

MAX_HEADER_BYTES = 16 * 1024  # a part's header block; Orthanc's are ~100 bytes
_MAX_PADDING = 256  # RFC 2046 transport-padding (LWSP) after a delimiter: unbounded there, bounded here


class MultipartError(ValueError):
    """A body that is not the multipart/related it claims to be (bad header block, oversized headers)."""


class TruncatedMultipart(MultipartError):
    """The body ended before its close delimiter (``--B--``): a part may be missing or cut."""


@dataclass(frozen=True, slots=True)
class PartStart:
    """A part begins; its header fields (RFC 2046 §5.1.1 body-part headers) in the order sent."""

    headers: Headers

    def get(self, name: str) -> str | None:
        """The first header field of that name (case-insensitive), else None."""
        return header(self.headers, name)


@dataclass(frozen=True, slots=True)
class PartData:
    """Some bytes of the current part's data (a part arrives as any number of these, possibly none)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part is complete (its delimiter was read)."""


@dataclass(frozen=True, slots=True)
class End:
    """The close delimiter was read; whatever follows (the epilogue) is ignored."""


Event = PartStart | PartData | PartEnd | End


def header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """The first header field called ``name`` (field names are case-insensitive, RFC 7230 §3.2)."""
    wanted = name.lower()
    return next((v for k, v in headers if k.lower() == wanted), None)


class MultipartParser:
    """Incremental parser of a multipart body with a known boundary (RFC 2046 §5.1.1).

    ``feed(chunk)`` returns the events the chunk completes; chunks may be split anywhere. Between calls at most
    ``len(delimiter) + 2 + transport padding`` bytes are kept, or a part's header block (up to
    ``max_header_bytes``); part data is handed out as it arrives. A preamble before the first delimiter and an
    epilogue after the close delimiter are ignored. ``close()`` raises :class:`TruncatedMultipart` unless the
    close delimiter was read.

    The delimiter is CRLF ``--`` boundary (the first one may start the body). Data that happens to contain the
    boundary but not a delimiter (not after CRLF, or followed by anything but ``--``, optional spaces/tabs and
    CRLF) is data: RFC 2046 forbids a sender to do so, but DICOM bytes are arbitrary and a tolerant reading
    costs nothing.
    """

    _PREAMBLE, _HEADERS, _DATA, _DONE = range(4)

    def __init__(self, boundary: str, *, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        if not is_boundary(boundary):
            raise ValueError("not a valid multipart boundary (RFC 2046 §5.1.1)")
        self._delim = b"\r\n--" + boundary.encode("ascii")
        self._max_header = max_header_bytes
        # The body is read as if preceded by CRLF, so a first dash-boundary at offset 0 is a delimiter too.
        self._buf = b"\r\n"
        self._state = self._PREAMBLE
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes held between calls (for tests of the memory bound)."""
        return len(self._buf)

    @property
    def done(self) -> bool:
        """The close delimiter has been read."""
        return self._state == self._DONE

    def feed(self, chunk: bytes) -> list[Event]:
        if self._closed:
            raise ValueError("feed() after close()")
        if self._state == self._DONE:
            return []  # epilogue
        data = self._buf + chunk if self._buf else bytes(chunk)
        pos = 0
        events: list[Event] = []
        while True:
            if self._state in (self._PREAMBLE, self._DATA):
                kind, at, nxt = self._scan(data, pos)
                if self._state == self._DATA and at > pos:
                    events.append(PartData(data if pos == 0 and at == len(data) else data[pos:at]))
                if kind == "more":
                    pos = at
                    break
                if self._state == self._DATA:
                    events.append(PartEnd())
                if kind == "close":
                    events.append(End())
                    self._state = self._DONE
                    pos = len(data)
                    break
                self._state = self._HEADERS
                pos = nxt
            elif self._state == self._HEADERS:
                if len(data) - pos < 2:
                    break
                if data.startswith(b"\r\n", pos):  # no header fields at all
                    headers: Headers = ()
                    pos += 2
                else:
                    block_end = data.find(b"\r\n\r\n", pos)
                    if block_end - pos > self._max_header or (block_end == -1 and len(data) - pos > self._max_header):
                        raise MultipartError("a part's header block is too long")
                    if block_end == -1:
                        break
                    headers = _parse_headers(data[pos:block_end])
                    pos = block_end + 4
                events.append(PartStart(headers))
                self._state = self._DATA
            else:  # done: the epilogue is ignored
                pos = len(data)
                break
        self._buf = data[pos:]
        return events

    def close(self) -> None:
        """End of input: raises :class:`TruncatedMultipart` unless the close delimiter was read."""
        self._closed = True
        self._buf = b""
        if self._state != self._DONE:
            raise TruncatedMultipart("the multipart body ended before its close delimiter")

    def _scan(self, data: bytes, pos: int) -> tuple[str, int, int]:
        """The next delimiter in ``data[pos:]``: ("boundary" | "close", its start, where the next thing
        starts), or ("more", k, k) when bytes from k on may still turn out to be a delimiter (all before k are
        surely not)."""
        delim = self._delim
        dl = len(delim)
        n = len(data)
        start = pos
        while True:
            i = data.find(delim, start)
            if i == -1:
                # Only a suffix that could begin a delimiter (it begins with CR) must wait for the next chunk.
                r = data.find(b"\r", max(start, n - dl + 1))
                return "more", (n if r == -1 else r), n
            j = i + dl
            if n - j < 2:
                if data[j:] in (b"", b"-", b"\r", b" ", b"\t"):
                    return "more", i, i
                start = i + 1  # followed by something else: data
                continue
            two = data[j : j + 2]
            if two == b"--":
                return "close", i, j + 2
            if two == b"\r\n":
                return "boundary", i, j + 2
            k = j
            while k < n and data[k] in b" \t":
                k += 1
            if k > j:  # transport padding
                if k - j > _MAX_PADDING:
                    raise MultipartError("too much transport padding after a multipart delimiter")
                if n - k < 2:
                    if data[k:] in (b"", b"\r"):
                        return "more", i, i
                elif data[k : k + 2] == b"\r\n":
                    return "boundary", i, k + 2
            start = i + 1


def _parse_headers(block: bytes) -> Headers:
    """RFC 2046 §5.1.1 / RFC 5322 header fields of a part (folded lines unfolded). Bytes are read as
    ISO-8859-1, so any byte round-trips through :class:`MultipartWriter`."""
    fields: list[tuple[str, str]] = []
    for line in block.decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and fields:  # obsolete folding (RFC 5322 §3.2.2)
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise MultipartError("a part header line is not a header field")
        fields.append((name, value.strip(" \t")))
    return tuple(fields)


class MultipartWriter:
    """Writes a multipart/related body: ``part_start(headers)``, the part's data as is, ``part_end()``, and at
    the end ``close()``. Produces Orthanc's layout (``--B\\r\\n`` headers ``\\r\\n\\r\\n`` data ``\\r\\n``,
    ``--B--\\r\\n``); the CRLF written by ``part_end`` belongs to the next delimiter (RFC 2046 §5.1.1).

    The default boundary is 32 random hex digits (128 bits): re-wrapped data is never inspected, so the
    boundary must be one that cannot plausibly occur in it.
    """

    def __init__(self, boundary: str | None = None) -> None:
        self.boundary = boundary if boundary is not None else secrets.token_hex(16)
        if not is_boundary(self.boundary):
            raise ValueError("not a valid multipart boundary (RFC 2046 §5.1.1)")
        self._dash = b"--" + self.boundary.encode("ascii")

    def content_type(self, type_param: str | None = None, *, extra: Sequence[tuple[str, str]] = ()) -> str:
        """``multipart/related; type="..."; <extra>; boundary=B`` (RFC 2387 §3.1; PS3.18 §8.7.3.1)."""
        params = ([("type", type_param)] if type_param is not None else []) + [*extra, ("boundary", self.boundary)]
        return format_media_type("multipart/related", params)

    def part_start(self, headers: Sequence[tuple[str, str]]) -> bytes:
        lines = [self._dash]
        for name, value in headers:
            if not name or any(c in name for c in ":\r\n ") or "\r" in value or "\n" in value:
                raise ValueError("a part header field cannot contain CR, LF, or (in its name) ':' or a space")
            lines.append(f"{name}: {value}".encode("latin-1"))
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def part_end(self) -> bytes:
        return b"\r\n"

    def close(self) -> bytes:
        return self._dash + b"--\r\n"

    def part(self, headers: Sequence[tuple[str, str]], data: bytes) -> bytes:
        """A whole part at once (for small bodies and tests)."""
        return self.part_start(headers) + data + self.part_end()


HeaderRewrite = Callable[[Headers], Sequence[tuple[str, str]] | None]


async def rewrap(
    chunks: AsyncIterable[bytes],
    boundary: str,
    writer: MultipartWriter,
    rewrite: HeaderRewrite,
    *,
    close: bool = True,
) -> AsyncGenerator[bytes, None]:
    """The parts of an upstream multipart body (``boundary``: the upstream one) re-written with ``writer``'s
    boundary: each part's headers go through ``rewrite`` (new headers, or None to leave the part out); the data
    passes unchanged. One output chunk per upstream chunk that yields any bytes, so backpressure is kept.

    With ``close=False`` the close delimiter is not written, so the parts of several upstream bodies can be
    concatenated into one (the caller then yields ``writer.close()``). A truncated or malformed upstream body
    raises :class:`MultipartError` *without* writing the close delimiter, so the client sees a cut body, never
    a well-formed one with parts silently missing.
    """
    parser = MultipartParser(boundary)
    keep = False
    async for chunk in chunks:
        out: list[bytes] = []
        for event in parser.feed(chunk):
            if isinstance(event, PartData):
                if keep:
                    out.append(event.data)
            elif isinstance(event, PartStart):
                new = rewrite(event.headers)
                keep = new is not None
                if new is not None:
                    out.append(writer.part_start(new))
            elif isinstance(event, PartEnd):
                if keep:
                    out.append(writer.part_end())
                keep = False
        if out:
            yield b"".join(out)
        if parser.done:
            break
    parser.close()
    if close:
        yield writer.close()
