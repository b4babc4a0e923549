"""Content-Type values of WADO-RS answers (pure; stdlib only): media type and parameters read and written
(RFC 7231 §3.1.1.1), and the ``boundary`` of a multipart body (RFC 2046 §5.1.1), for app.dicom.multipart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "RENDERED_TYPES",
    "accepts_dicom_json",
    "boundary_of",
    "format_media_type",
    "is_boundary",
    "parse_media_type",
    "rendered_accept",
    "retrieve_accept",
    "with_boundary",
]

# RFC 2046 §5.1.1: boundary := 0*69<bchars> bcharsnospace, bchars = DIGIT / ALPHA / "'()+_,-./:=? " and space.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# RFC 7230 §3.2.6 token characters: a parameter value made only of these needs no quotes.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case) and its parameters (names lower case, values unquoted; the first of a
    repeated name wins) from a Content-Type value (RFC 7231 §3.1.1.1: quoted-string with backslash escapes).

    Tolerant: a parameter that cannot be read is skipped, never an error. A ``;`` inside quotes is part of the
    value (Orthanc's frames ``type="application/octet-stream; transfer-syntax=..."``).
    """
    n = len(value)
    i = value.find(";")
    if i == -1:
        i = n
    media = value[:i].strip().lower()
    params: dict[str, str] = {}
    while i < n:
        i += 1  # past ';'
        j = i
        while j < n and value[j] not in "=;":
            j += 1
        name = value[i:j].strip().lower()
        if j >= n or value[j] == ";":  # a name without '=': skipped
            i = j
            continue
        j += 1  # past '='
        while j < n and value[j] in " \t":
            j += 1
        if j < n and value[j] == '"':
            out: list[str] = []
            j += 1
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n:
                    j += 1
                out.append(value[j])
                j += 1
            text = "".join(out)
            j += 1  # past the closing quote (or the end)
            while j < n and value[j] != ";":  # anything after the quoted string is ignored
                j += 1
        else:
            k = value.find(";", j)
            k = n if k == -1 else k
            text = value[j:k].strip()
            j = k
        if name and name not in params:
            params[name] = text
        i = j
    return media, params


def is_boundary(text: str) -> bool:
    """RFC 2046 §5.1.1: 1 to 70 bchars, not ending in a space."""
    return _BOUNDARY_RE.fullmatch(text) is not None


def boundary_of(content_type: str) -> str | None:
    """The ``boundary`` parameter of a ``multipart/*`` Content-Type (quoted or not), None when the type is not
    multipart or the boundary is missing or not a valid RFC 2046 boundary."""
    media, params = parse_media_type(content_type)
    boundary = params.get("boundary")
    if not media.startswith("multipart/") or boundary is None or not is_boundary(boundary):
        return None
    return boundary


def _param(value: str) -> str:
    """A parameter value as a token when it is one, else a quoted-string (RFC 7231 §3.1.1.1)."""
    if _TOKEN_RE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_media_type(media: str, params: Sequence[tuple[str, str]]) -> str:
    """``media; name=value; ...`` with values quoted where needed; ``type`` is always quoted, as PS3.18 §8.7.3.1
    (and every DICOMweb client) writes it."""
    out = [media]
    for name, value in params:
        if "\r" in value or "\n" in value:
            raise ValueError("a media type parameter cannot contain CR or LF")
        quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' if name.lower() == "type" else None
        out.append(f"{name}={quoted or _param(value)}")
    return "; ".join(out)


def with_boundary(content_type: str, boundary: str) -> str:
    """The same Content-Type (media type and every other parameter, in order) with ``boundary`` replaced: the
    re-wrapped body keeps the PACS's ``type`` and ``transfer-syntax`` whichever way they were written."""
    media, params = parse_media_type(content_type)
    kept = [(k, v) for k, v in params.items() if k != "boundary"]
    return format_media_type(media or "multipart/related", [*kept, ("boundary", boundary)])


# PS3.18 §8.7.4 (Table 8.7.4-2), rendered single-frame media types; image/jpeg is the one every origin server
# supports and the default when the client accepts any image.
RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif", "image/jp2")


def rendered_accept(accept: str | None) -> str | None:
    """One media type for a ``rendered`` request: the client's most preferred (RFC 9110 §12.5.1, ``q``) of
    :data:`RENDERED_TYPES`, ``image/jpeg`` for ``*/*`` or ``image/*``; the header as sent when it names none of them.

    A browser or viewer may send several (``image/jpeg, image/png;q=0.9``), which is legal, but Orthanc 1.10 answers
    such a list with 400, so the gateway asks the PACS for the one type the client prefers.
    """
    if not accept:
        return accept
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(_split_list(accept)):
        media, params = parse_media_type(part)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 1.0
        if q <= 0:
            continue
        if media in ("*/*", "image/*"):
            media = RENDERED_TYPES[0]
        if media in RENDERED_TYPES:
            ranked.append((-q, position, media))
    return min(ranked)[2] if ranked else accept


def _split_list(value: str) -> list[str]:
    """A comma-separated header list, commas inside quoted strings kept (RFC 9110 §5.6.1, §5.6.4)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


_JSON_TYPES = frozenset({"application/dicom+json", "application/json", "application/*", "*/*"})


def accepts_dicom_json(accept: str | None) -> bool:
    """Whether an Accept value lets a QIDO-RS answer be ``application/dicom+json`` (PS3.18 §10.6.3; no Accept, or
    ``*/*``, allows it; a type listed with ``q=0`` refuses it, RFC 9110 §12.4.2)."""
    if accept is None or not accept.strip():
        return True
    return any(media in _JSON_TYPES and _q(params) > 0 for media, params in map(parse_media_type, _split_list(accept)))


# PS3.18 §8.7.3.5 default media types of a retrieve when the client states no preference (Table 8.7.3-5): DICOM
# instances for studies, series and instances; bulk data and frames as octet-stream (Explicit VR Little Endian).
DEFAULT_INSTANCES = 'multipart/related; type="application/dicom"'
DEFAULT_BULK = 'multipart/related; type="application/octet-stream"'
_ANY = frozenset({"*/*", "multipart/*", "multipart/related"})


def retrieve_accept(accept: str | None, resource: str) -> str | None:
    """The Accept to ask the PACS for a retrieve (``resource`` "" for a study, series or instance, "frames" or
    "bulk"): the standard's default (:data:`DEFAULT_INSTANCES`, :data:`DEFAULT_BULK`) when the client named no
    type (no Accept, ``*/*``, ``multipart/related`` without ``type`` or with ``type="*/*"``: dicomtrolley and
    dicomweb-client send these, and Orthanc 1.10 answers the last with 400); else the header as sent."""
    if accept and any(
        media not in _ANY or params.get("type", "*/*") != "*/*"
        for media, params in map(parse_media_type, _split_list(accept))
        if _q(params) > 0
    ):
        return accept
    return DEFAULT_INSTANCES if resource == "" else DEFAULT_BULK


def _q(params: dict[str, str]) -> float:
    try:
        return float(params.get("q", "1"))
    except ValueError:
        return 1.0
