"""app.dicom.multipart: the incremental multipart/related parser, the writer and the re-wrapping stream, on bodies
shaped like Orthanc 1.10 + DICOMweb 1.7's (shared/docs/wado-gateway.md §3), split at arbitrary points."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence

import pytest

from app.dicom.media_type import boundary_of, format_media_type, parse_media_type, with_boundary
from app.dicom.multipart import (
    End,
    Event,
    MultipartError,
    MultipartParser,
    MultipartWriter,
    PartData,
    PartEnd,
    PartStart,
    TruncatedMultipart,
    header,
    rewrap,
)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROFILE = settings(max_examples=300, derandomize=True, database=None, deadline=None)

B = "8f1c2b3a4d5e6f708192a3b4c5d6e7f8"  # Orthanc-like: hex, unquoted
FRAMES_TYPE = 'multipart/related; type="application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"; boundary=' + B
LOC = "http://127.0.0.1:8042/dicom-web/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/{n}"

Part = tuple[tuple[tuple[str, str], ...], bytes]


def orthanc_part(content_type: str, data: bytes, *, location: str | None = None, length: bool = True) -> Part:
    headers = [("Content-Type", content_type)]
    if length:
        headers.append(("Content-Length", str(len(data))))
    headers.append(("MIME-Version", "1.0"))
    if location:
        headers.append(("Content-Location", location))
    return tuple(headers), data


def body(parts: Sequence[Part], boundary: str = B, *, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """Orthanc's layout: --B CRLF headers CRLF CRLF data CRLF ... --B-- CRLF."""
    out = [preamble]
    for headers, data in parts:
        out.append(f"--{boundary}\r\n".encode())
        out.extend(f"{k}: {v}\r\n".encode() for k, v in headers)
        out.append(b"\r\n" + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode() + epilogue)
    return b"".join(out)


def parse(raw: bytes, splits: Sequence[int] = (), boundary: str = B) -> tuple[list[Part], list[Event]]:
    """Feed ``raw`` cut at ``splits``; the parts and the event sequence (data events merged)."""
    parser = MultipartParser(boundary)
    events: list[Event] = []
    cuts = [0, *sorted(set(splits)), len(raw)]
    for a, b in itertools.pairwise(cuts):
        events += parser.feed(raw[a:b])
        assert parser.buffered <= len(boundary) + 6 + 300, "more than a delimiter (or a header block) held"
    parser.close()
    parts: list[Part] = []
    current: tuple[tuple[str, str], ...] | None = None
    data = b""
    kinds: list[str] = []
    for e in events:
        if isinstance(e, PartStart):
            assert current is None
            current, data = e.headers, b""
        elif isinstance(e, PartData):
            assert current is not None and e.data
            data += e.data
        elif isinstance(e, PartEnd):
            assert current is not None
            parts.append((current, data))
            current = None
        else:
            assert current is None
        kind = type(e).__name__
        if not (kind == "PartData" and kinds[-1:] == ["PartData"]):
            kinds.append(kind)
    assert kinds[-1] == "End" and kinds.count("End") == 1
    return parts, events


def frames_answer(n: int = 3) -> list[Part]:
    return [
        orthanc_part(
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
            bytes([i]) * (100 + i),
            location=LOC.format(n=i + 1),
        )
        for i in range(n)
    ]


# --- Content-Type parameters ------------------------------------------------------------------------------


def test_boundary_of_orthanc_frames_content_type() -> None:
    # The transfer syntax sits inside the quoted type, with its own ';' (wado-gateway.md §3).
    assert boundary_of(FRAMES_TYPE) == B
    media, params = parse_media_type(FRAMES_TYPE)
    assert media == "multipart/related"
    assert params["type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary="a b:c"', "a b:c"),
        ("Multipart/Related; BOUNDARY=xyz; type=application/dicom", "xyz"),
        ('multipart/related;boundary="q\\"x"', None),  # '"' is not a bchar
        ("multipart/related; type=application/dicom", None),
        ("application/dicom; boundary=abc", None),
        ("multipart/related; boundary=" + "a" * 71, None),
        ('multipart/related; boundary="ends with space "', None),
        ("multipart/related; boundary=", None),
        ("multipart/related; junk; boundary=ok", "ok"),
    ],
)
def test_boundary_of(content_type: str, boundary: str | None) -> None:
    assert boundary_of(content_type) == boundary


def test_format_and_with_boundary_keep_the_other_parameters() -> None:
    assert with_boundary(FRAMES_TYPE, "new") == (
        'multipart/related; type="application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"; boundary=new'
    )
    standard = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50; boundary=x'
    assert with_boundary(standard, "y") == standard[:-1] + "y"
    assert format_media_type("text/plain", [("charset", "a b"), ("q", 'x"y')]) == 'text/plain; charset="a b"; q="x\\"y"'
    assert parse_media_type(format_media_type("a/b", [("type", 'x"\\y')]))[1] == {"type": 'x"\\y'}
    with pytest.raises(ValueError):
        format_media_type("a/b", [("type", "x\r\ny")])


# --- parser on fixed bodies ---------------------------------------------------------------------------------


def test_orthanc_frames_answer_byte_by_byte() -> None:
    parts = frames_answer()
    raw = body(parts)
    got, _ = parse(raw, splits=range(len(raw)))
    assert got == parts
    assert header(got[1][0], "content-location") == LOC.format(n=2)


def test_preamble_epilogue_parts_without_length_or_headers() -> None:
    parts: list[Part] = [
        orthanc_part("application/dicom", b"DICM" * 10, length=False),
        ((), b"no header fields at all"),
        (orthanc_part("application/dicom", b"")[0], b""),  # an empty part
    ]
    raw = body(parts, preamble=b"This is a preamble\r\n--not-it\r\n", epilogue=b"epilogue\r\n--" + B.encode())
    assert parse(raw)[0] == parts


def test_crlf_and_boundary_lookalikes_inside_data_are_data() -> None:
    tricky = [
        b"\r\n",
        b"--" + B.encode() + b"\r\n",  # not after CRLF
        b"x\r\n--" + B.encode() + b"X\r\n",  # after CRLF but followed by another byte
        b"x\r\n--" + B.encode() + b"-x",  # a single dash is not a close delimiter
        b"x\r\n--" + B.encode() + b"  x\r\n",  # padding then not CRLF
        b"\r\n--" + B[:-1].encode() + b"\r\n",  # a shorter boundary
        b"\r\r\n\n--\r\n",
    ]
    parts = [orthanc_part("application/dicom", t) for t in tricky]
    raw = body(parts)
    assert parse(raw)[0] == parts
    assert parse(raw, splits=range(0, len(raw), 3))[0] == parts


def test_zero_parts_and_transport_padding() -> None:
    assert parse(f"--{B}--\r\n".encode())[0] == []
    raw = f"--{B} \t\r\nContent-Type: a/b\r\n\r\nxyz\r\n--{B}-- \r\n".encode()
    assert parse(raw)[0] == [((("Content-Type", "a/b"),), b"xyz")]


def test_folded_header_and_odd_spacing() -> None:
    raw = f"--{B}\r\nContent-Type:application/dicom\r\nContent-Description: a\r\n\tb\r\n\r\nx\r\n--{B}--".encode()
    assert parse(raw)[0] == [((("Content-Type", "application/dicom"), ("Content-Description", "a b")), b"x")]


@pytest.mark.parametrize(
    "cut",
    [
        b"",  # nothing at all
        b"preamble only",
        f"--{B}".encode(),
        f"--{B}\r\nContent-Type: a/b\r\n".encode(),  # inside the header block
        f"--{B}\r\nContent-Type: a/b\r\n\r\nsome data".encode(),  # inside the data
        f"--{B}\r\nContent-Type: a/b\r\n\r\ndata\r\n--{B}\r\n".encode(),  # after a part
        f"--{B}\r\nContent-Type: a/b\r\n\r\ndata\r\n--{B}-".encode(),  # half a close delimiter
    ],
)
def test_truncated_body_raises_on_close(cut: bytes) -> None:
    parser = MultipartParser(B)
    parser.feed(cut)
    with pytest.raises(TruncatedMultipart) as info:
        parser.close()
    assert isinstance(info.value, ValueError) and isinstance(info.value, MultipartError)
    with pytest.raises(ValueError):
        parser.feed(b"more")


def test_header_block_is_bounded() -> None:
    parser = MultipartParser(B, max_header_bytes=1000)
    parser.feed(f"--{B}\r\nX-Long: ".encode())
    with pytest.raises(MultipartError, match="header block is too long"):
        for _ in range(20):
            parser.feed(b"a" * 100)
    whole = f"--{B}\r\nX-Long: {'a' * 2000}\r\n\r\nx\r\n--{B}--".encode()
    with pytest.raises(MultipartError):
        MultipartParser(B, max_header_bytes=1000).feed(whole)


def test_bad_header_line_and_bad_boundary() -> None:
    with pytest.raises(MultipartError):
        MultipartParser(B).feed(f"--{B}\r\nno colon here\r\n\r\nx".encode())
    with pytest.raises(ValueError):
        MultipartParser("bad\r\nboundary")


def test_a_big_part_is_never_held_whole() -> None:
    """A 4 MB part fed in 64 kB chunks: at most a delimiter is kept between calls, and data events are never
    bigger than a chunk plus a delimiter."""
    data = bytes(range(256)) * (4 * 4096)
    raw = body([orthanc_part("application/dicom", data)])
    parser = MultipartParser(B)
    total, biggest, held = 0, 0, 0
    for i in range(0, len(raw), 65536):
        for e in parser.feed(raw[i : i + 65536]):
            if isinstance(e, PartData):
                total += len(e.data)
                biggest = max(biggest, len(e.data))
        held = max(held, parser.buffered)
    parser.close()
    assert total == len(data)
    assert biggest <= 65536 + len(B) + 4
    assert held <= len(B) + 4 + 200  # the first call holds the header block until it is complete


def test_events_after_the_close_delimiter_are_ignored() -> None:
    parser = MultipartParser(B)
    events = parser.feed(f"--{B}--\r\n".encode())
    assert events == [End()]
    assert parser.feed(f"--{B}\r\nContent-Type: a/b\r\n\r\nx".encode()) == []
    parser.close()


# --- writer ---------------------------------------------------------------------------------------------------


def test_writer_produces_orthancs_layout() -> None:
    parts = frames_answer(2)
    w = MultipartWriter(B)
    raw = b"".join(w.part(h, d) for h, d in parts) + w.close()
    assert raw == body(parts)
    assert w.content_type("application/dicom") == f'multipart/related; type="application/dicom"; boundary={B}'
    assert (
        w.content_type("application/dicom", extra=[("transfer-syntax", "*")])
        == f'multipart/related; type="application/dicom"; transfer-syntax=*; boundary={B}'
    )


def test_writer_default_boundary_is_random_and_valid() -> None:
    a, b = MultipartWriter(), MultipartWriter()
    assert a.boundary != b.boundary and len(a.boundary) == 32
    assert boundary_of(a.content_type("application/dicom")) == a.boundary


@pytest.mark.parametrize("headers", [[("X", "a\r\nInjected: 1")], [("Bad Name", "x")], [("A:b", "x")], [("", "x")]])
def test_writer_refuses_header_injection(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        MultipartWriter(B).part_start(headers)


# --- rewrap ---------------------------------------------------------------------------------------------------


async def _chunks(raw: bytes, cuts: Sequence[int]) -> AsyncIterator[bytes]:
    points = [0, *sorted(set(cuts)), len(raw)]
    for a, b in itertools.pairwise(points):
        yield raw[a:b]


def run_rewrap(raw: bytes, cuts: Sequence[int], writer: MultipartWriter, rewrite, **kw) -> list[bytes]:  # type: ignore[no-untyped-def]
    async def collect() -> list[bytes]:
        return [c async for c in rewrap(_chunks(raw, cuts), B, writer, rewrite, **kw)]

    return asyncio.run(collect())


def test_rewrap_identity_with_the_same_boundary_is_byte_exact() -> None:
    raw = body(frames_answer(4))
    out = run_rewrap(raw, range(0, len(raw), 7), MultipartWriter(B), lambda h: h)
    assert b"".join(out) == raw


def test_rewrap_rewrites_headers_and_drops_parts() -> None:
    parts = frames_answer(4)
    raw = body(parts)

    def rewrite(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]] | None:
        loc = header(headers, "Content-Location") or ""
        if loc.endswith("/frames/2"):
            return None
        return [(k, v.replace("http://127.0.0.1:8042/dicom-web", "https://gw/dicomweb")) for k, v in headers]

    w = MultipartWriter()
    out = b"".join(run_rewrap(raw, [5, 99, 300], w, rewrite))
    got, _ = parse(out, boundary=w.boundary)
    assert [d for _, d in got] == [parts[i][1] for i in (0, 2, 3)]
    assert [header(h, "content-location") for h, _ in got] == [
        f"https://gw/dicomweb/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/{n}" for n in (1, 3, 4)
    ]
    assert b"8042" not in out and B.encode() not in out


def test_rewrap_chains_several_bodies_into_one() -> None:
    w = MultipartWriter()
    a, b = frames_answer(1), frames_answer(2)

    async def collect() -> bytes:
        out = []
        for parts in (a, b):
            out += [c async for c in rewrap(_chunks(body(parts), [10]), B, w, lambda h: h, close=False)]
        return b"".join(out) + w.close()

    got, _ = parse(asyncio.run(collect()), boundary=w.boundary)
    assert got == a + b


def test_rewrap_of_a_truncated_body_raises_without_closing() -> None:
    raw = body(frames_answer(3))
    cut = raw[: len(raw) // 2]
    w = MultipartWriter()
    out: list[bytes] = []

    async def collect() -> None:
        async for c in rewrap(_chunks(cut, [50]), B, w, lambda h: h):
            out.append(c)

    with pytest.raises(TruncatedMultipart):
        asyncio.run(collect())
    assert w.close() not in b"".join(out)


def test_rewrap_yields_as_it_goes() -> None:
    """Backpressure: the first output chunk comes before the upstream is read to its end."""
    raw = body([orthanc_part("application/dicom", b"x" * 100_000)])
    pulled = []

    async def upstream() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 1000):
            pulled.append(i)
            yield raw[i : i + 1000]

    async def first() -> bytes:
        gen = rewrap(upstream(), B, MultipartWriter(), lambda h: h)
        chunk = await gen.__anext__()
        await gen.aclose()
        return chunk

    assert asyncio.run(first()).startswith(b"--")
    assert len(pulled) <= 2


# --- hypothesis: any body, any split --------------------------------------------------------------------------

_PIECES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"\r\n",
            b"\r",
            b"--",
            B.encode(),
            b"--" + B.encode(),
            b"\r\n--" + B.encode() + b"X",
            b"\r\n--" + B.encode() + b"-",
            b"\r\n--" + B[:8].encode(),
        ]
    ),
)
_DATA = st.lists(_PIECES, max_size=12).map(b"".join)
_HEADERS = st.sampled_from(
    [
        (("Content-Type", "application/dicom"), ("MIME-Version", "1.0")),
        (("Content-Type", "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"),),
        (("Content-Type", "application/dicom"), ("Content-Location", LOC.format(n=7))),
        (),
    ]
)


def _real_delimiter_in(data: bytes) -> bool:
    """Would ``data`` followed by a delimiter contain an earlier delimiter? (RFC 2046 forbids a sender that.)"""
    delim = b"\r\n--" + B.encode()
    tail = data + delim + b"\r\n"
    i = tail.find(delim)
    while i != -1 and i < len(data):
        after = tail[i + len(delim) :].lstrip(b" \t")
        if tail[i + len(delim) :].startswith(b"--") or after.startswith(b"\r\n"):
            return True
        i = tail.find(delim, i + 1)
    return False


@st.composite
def answers(draw: st.DrawFn) -> tuple[list[Part], bytes]:
    parts = []
    for data in draw(st.lists(_DATA, max_size=5)):
        assume(not _real_delimiter_in(data))
        headers = draw(_HEADERS)
        if header(headers, "Content-Type") and draw(st.booleans()):
            headers = (*headers, ("Content-Length", str(len(data))))
        parts.append((headers, data))
    preamble = draw(st.sampled_from([b"", b"preamble text\r\n", b"--" + B.encode() + b"X\r\n"]))
    return parts, body(parts, preamble=preamble)


@PROFILE
@given(answers(), st.lists(st.integers(min_value=0, max_value=4000), max_size=30))
def test_any_split_gives_the_same_parts(answer: tuple[list[Part], bytes], cuts: list[int]) -> None:
    parts, raw = answer
    got, _ = parse(raw, [c % (len(raw) + 1) for c in cuts])
    assert got == parts


@PROFILE
@given(answers(), st.lists(st.integers(min_value=0, max_value=4000), max_size=30))
def test_rewrap_round_trips_under_any_split(answer: tuple[list[Part], bytes], cuts: list[int]) -> None:
    parts, raw = answer
    cuts = [c % (len(raw) + 1) for c in cuts]
    assert b"".join(run_rewrap(raw, cuts, MultipartWriter(B), lambda h: h)) == body(parts)
    w = MultipartWriter()
    got, _ = parse(b"".join(run_rewrap(raw, cuts, w, lambda h: h)), boundary=w.boundary)
    assert got == parts
