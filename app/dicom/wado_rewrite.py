"""WADO-RS paths and the PACS URLs in its answers, placed under the gateway's address (pure; stdlib only).

Orthanc builds the URLs it puts in its answers (``BulkDataURI`` in metadata, ``RetrieveURL`` in QIDO rows, the
``Content-Location`` of frame parts) from its own idea of its host: ``DicomWeb.Host``, a ``Forwarded`` header or
the request's ``Host`` (shared/docs/wado-gateway.md §3), under its plugin root. None of that is the gateway's
address, and every one of them would send a client straight to the private PACS. So URLs are rewritten **by
path**: the WADO-RS resource path (``studies/{s}/...``, PS3.18 §10.4.1 resources) is taken from wherever it sits
in the URL, checked against the routes the gateway serves (:func:`parse_wado_path`), and put under
``public_base`` (the Endpoint.address, capability included). A URL that cannot be placed that way is dropped,
never passed through.

:func:`parse_wado_path` is also the route validator: UIDs per PS3.5 §9.1, frame lists of positive integers
(PS3.18 §10.4.1), bulk data tag paths of hex tags and item indexes, and the canonical path rebuilt from the
validated pieces only (what the PACS is asked, never the client's raw text).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import dicom_json as dj

RETRIEVE_URL = "00081190"  # Retrieve URL (UR), PS3.18 §10.6.3 QIDO-RS response attributes; also in KOS items
RETRIEVE_URI = "0040E010"  # Retrieve URI (UR), the older attribute some archives still send
_URL_TAGS = frozenset({RETRIEVE_URL, RETRIEVE_URI})

# PS3.5 §9.1: digits and dots, no leading zero in a component, at most 64 characters. The same rule as
# app.fhir.search_values.is_uid, repeated here because app.dicom sits below app.fhir in the layering.
_UID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")
# A bulk data path (Orthanc: ``bulk/{tag}`` or ``bulk/{sequence tag}/{item index}/{tag}``...): PS3.18 F.2.6
# leaves the BulkDataURI opaque; these are the only shapes the gateway forwards.
_BULK_RE = re.compile(r"[0-9a-fA-F]{8}(?:/[0-9]{1,6}/[0-9a-fA-F]{8}){0,16}")
_FRAME_RE = re.compile(r"[1-9][0-9]{0,8}")
_MAX_FRAMES = 10_000
_MAX_URI = 4096

# Part header fields passed on when a part is re-wrapped (RFC 2046 §5.1.1 / RFC 2045 content headers); any
# other field is left out, so nothing the PACS adds to a part reaches the client unchecked.
_PART_HEADERS = frozenset(
    {"content-type", "content-length", "content-location", "content-id", "content-description", "mime-version"}
)

LEVEL_RESOURCES = {
    # resource names allowed after each level (PS3.18 §10.4.1 retrieve, §10.4.1.1.5 thumbnail, §10.6.1 QIDO within
    # a study: those are the gateway's searches, kept here so RetrieveURLs naming them are placed)
    "study": frozenset({"", "metadata", "rendered", "thumbnail", "series", "instances"}),
    "series": frozenset({"", "metadata", "rendered", "thumbnail", "instances"}),
    "instance": frozenset({"", "metadata", "rendered", "thumbnail", "frames", "bulk"}),
}
# A thumbnail is the rendered resource at this size unless the client names a viewport (PS3.18 §8.3.5.1.3):
# Orthanc 1.10 has no thumbnail resource (plugin 1.19 added it), and viewers ask for one by default (OHIF).
THUMBNAIL_VIEWPORT = "128,128"
_NUMBER = re.compile(r"-?[0-9]{1,6}(?:\.[0-9]{1,6})?")
_SIZE = re.compile(r"[1-9][0-9]{0,4}")
_WINDOW_FUNCTIONS = frozenset({"linear", "linear-exact", "sigmoid"})


def is_uid(text: str) -> bool:
    """PS3.5 §9.1 UID."""
    return len(text) <= 64 and _UID_RE.fullmatch(text) is not None


def parse_frame_list(text: str) -> tuple[int, ...] | None:
    """PS3.18 §10.4.1 frame list: comma-separated frame numbers, each ≥ 1 (order and repeats kept);
    None when malformed (spaces, signs, zero, empty items, more than 10,000 frames)."""
    items = text.split(",")
    if len(items) > _MAX_FRAMES or not all(_FRAME_RE.fullmatch(item) for item in items):
        return None
    return tuple(int(item) for item in items)


def is_bulk_path(text: str) -> bool:
    """``tag(/index/tag)*`` with 8-hex-digit tags (as Orthanc writes BulkDataURIs)."""
    return _BULK_RE.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class WadoPath:
    """A validated WADO-RS resource path below a WADO-RS base.

    ``resource`` is "" (the study/series/instance itself), "metadata", "rendered", "thumbnail", "series" or
    "instances" (QIDO-RS inside the study / series), "frames" (``frames`` holds the numbers; ``rendered`` then says
    ``frames/{list}/rendered``) or "bulk" (``bulk`` holds the tag path).
    """

    study: str
    series: str | None = None
    instance: str | None = None
    resource: str = ""
    frames: tuple[int, ...] = ()
    bulk: str = ""
    rendered: bool = False  # frames/{list}/rendered

    @property
    def level(self) -> str:
        return "instance" if self.instance else "series" if self.series else "study"

    @property
    def path(self) -> str:
        """The canonical relative path, built from the validated pieces only."""
        out = f"studies/{self.study}"
        if self.series:
            out += f"/series/{self.series}"
        if self.instance:
            out += f"/instances/{self.instance}"
        if self.resource == "frames":
            out += "/frames/" + ",".join(str(n) for n in self.frames) + ("/rendered" if self.rendered else "")
        elif self.resource == "bulk":
            out += f"/bulk/{self.bulk}"
        elif self.resource:
            out += f"/{self.resource}"
        return out

    @property
    def template(self) -> str:
        """The route template (for metrics and audit: no UIDs in it)."""
        out = "studies/{study}"
        if self.series:
            out += "/series/{series}"
        if self.instance:
            out += "/instances/{instance}"
        if self.resource == "frames":
            out += "/frames/{frames}" + ("/rendered" if self.rendered else "")
        elif self.resource == "bulk":
            out += "/bulk/{path}"
        elif self.resource:
            out += f"/{self.resource}"
        return out


def parse_wado_path(path: str) -> WadoPath | None:
    """``studies/{s}[/series/{se}[/instances/{i}]][/resource...]`` → a :class:`WadoPath`, None when it is not
    one of the gateway's routes (no leading or trailing slash, no empty segment, no ``..``, no query)."""
    segs = path.split("/")
    if len(segs) < 2 or segs[0] != "studies" or not is_uid(segs[1]):
        return None
    study, series, instance = segs[1], None, None
    rest = segs[2:]
    if len(rest) >= 2 and rest[0] == "series" and is_uid(rest[1]):
        series, rest = rest[1], rest[2:]
        if len(rest) >= 2 and rest[0] == "instances" and is_uid(rest[1]):
            instance, rest = rest[1], rest[2:]
    level = "instance" if instance else "series" if series else "study"
    if not rest:
        return WadoPath(study, series, instance)
    resource = rest[0]
    if resource not in LEVEL_RESOURCES[level] or not resource:
        return None
    if resource == "frames":
        if len(rest) not in (2, 3) or (len(rest) == 3 and rest[2] != "rendered"):
            return None
        frames = parse_frame_list(rest[1])
        if frames is None:
            return None
        return WadoPath(study, series, instance, "frames", frames=frames, rendered=len(rest) == 3)
    if resource == "bulk":
        tag_path = "/".join(rest[1:])
        return WadoPath(study, series, instance, "bulk", bulk=tag_path) if is_bulk_path(tag_path) else None
    return WadoPath(study, series, instance, resource) if len(rest) == 1 else None


def rendered_query(items: Sequence[tuple[str, str]], *, thumbnail: bool) -> str | None:
    """The query string for the PACS of a ``rendered`` (or ``thumbnail``) request, rebuilt from the client's
    decoded parameters (PS3.18 §8.3.5.1, Table 8.3.5-1): ``viewport`` (vw,vh or vw,vh,sx,sy,sw,sh), ``quality``
    (1-100) and ``window`` (center,width,function); a thumbnail takes the viewport only, and gets
    :data:`THUMBNAIL_VIEWPORT` without one. None when a parameter is unknown, repeated or malformed. ``accept``
    (§8.3.3.1, OHIF sends ``thumbnail?accept=image/jpeg``) is allowed and left out: it stands for the Accept
    header, which the caller takes from it.

    Never the client's spelling: Orthanc 1.10 does not percent-decode query values (shared/docs/orthanc-qido.md
    TL;DR 1) and answers ``viewport=256%2C256``, as OHIF sends it, with 400."""
    allowed = ("viewport", "accept") if thumbnail else ("viewport", "quality", "window", "accept")
    seen: dict[str, str] = {}
    for key, value in items:
        if key not in allowed or key in seen:
            return None
        seen[key] = value
    out: list[str] = []
    if "quality" in seen:
        if not _SIZE.fullmatch(seen["quality"]) or not 1 <= int(seen["quality"]) <= 100:
            return None
        out.append(f"quality={int(seen['quality'])}")
    viewport = seen.get("viewport", THUMBNAIL_VIEWPORT if thumbnail else None)
    if viewport is not None:
        parts = viewport.split(",")
        if len(parts) not in (2, 6) or not all(_SIZE.fullmatch(p) for p in parts[:2]):
            return None
        if not all(_NUMBER.fullmatch(p) for p in parts[2:]):
            return None
        out.append("viewport=" + ",".join(parts))
    if "window" in seen:
        parts = seen["window"].split(",")
        if len(parts) != 3 or not all(_NUMBER.fullmatch(p) for p in parts[:2]) or parts[2] not in _WINDOW_FUNCTIONS:
            return None
        out.append("window=" + ",".join(parts))
    return "&".join(out)


def rewrite_uri(uri: object, public_base: str) -> str | None:
    """A PACS URL (absolute http(s) with any host, scheme-relative, or a path) → the same WADO-RS resource under
    ``public_base``; None when it cannot be placed (no ``studies/{uid}`` in its path, not a route the gateway
    serves, another scheme, too long). The query and fragment are dropped: none of the rewritten URLs needs
    one, and a PACS could put a credential there."""
    if not isinstance(uri, str) or not uri or len(uri) > _MAX_URI:
        return None
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    if parts.scheme and parts.scheme.lower() not in ("http", "https"):
        return None
    segs = parts.path.split("/")
    if "." in segs or ".." in segs:  # RFC 3986 §5.2.4 dot segments would move the resource: not placed
        return None
    # The last "studies/{uid}" pair: the PACS's root may be anything (even contain "studies"), but no WADO-RS
    # resource has "studies" below the study.
    starts = [i for i in range(len(segs) - 1) if segs[i] == "studies" and is_uid(segs[i + 1])]
    if not starts:
        return None
    target = parse_wado_path("/".join(segs[starts[-1] :]))
    if target is None:
        return None
    return f"{public_base.rstrip('/')}/{target.path}"


def rewrite_dataset(ds: dj.Dataset, public_base: str) -> dj.Dataset:
    """One DICOM JSON dataset (PS3.18 Annex F) with every ``BulkDataURI`` (F.2.6; at any depth, in sequence
    items too) and every Retrieve URL / Retrieve URI value rewritten by :func:`rewrite_uri`. An attribute whose
    URL cannot be placed is left out whole (an empty attribute would claim "no value", a kept one would point
    at the PACS). The input is not modified."""
    out: dj.Dataset = {}
    for tag, element in ds.items():
        new = _element(tag, element, public_base)
        if new is not None:
            out[tag] = new
    return out


def rewrite_dicom_json(datasets: Sequence[dj.Dataset], public_base: str) -> list[dj.Dataset]:
    """A DICOM JSON answer (metadata, or QIDO rows, PS3.18 F.2.1.1: an array of datasets) rewritten with
    :func:`rewrite_dataset`; anything in the array that is not an object is left out."""
    return [rewrite_dataset(ds, public_base) for ds in datasets if isinstance(ds, dict)]


def _element(tag: str, element: Any, base: str) -> Any:
    if not isinstance(element, dict):
        return element
    out = element
    if "BulkDataURI" in element:
        uri = rewrite_uri(element["BulkDataURI"], base)
        if uri is None:
            return None
        out = {**element, "BulkDataURI": uri}
    if tag.upper() in _URL_TAGS and "Value" in element:
        values = element["Value"]
        if not isinstance(values, list):
            return None
        urls = [u for v in values if (u := rewrite_uri(v, base)) is not None]
        return {**out, "Value": urls} if urls else None
    values = element.get("Value")
    if element.get("vr") == "SQ" and isinstance(values, list):
        out = {**out, "Value": [rewrite_dataset(i, base) if isinstance(i, dict) else i for i in values]}
    return out


def drop_instances(datasets: Sequence[dj.Dataset], rejected: Collection[str]) -> list[dj.Dataset]:
    """Datasets (instance metadata or instance-level QIDO rows) without those whose SOP Instance UID
    (0008,0018) an IOCM rejection note rejects (IHE RAD TF-2 Rejection Note): they are never served."""
    if not rejected:
        return list(datasets)
    return [ds for ds in datasets if dj.text(_upper_keys(ds), dj.SOP_INSTANCE_UID) not in rejected]


def _upper_keys(ds: dj.Dataset) -> dj.Dataset:
    # PS3.18 F.2.1.1.1 keys are upper-case hex; read a lower-case server's too.
    return ds if dj.SOP_INSTANCE_UID in ds else {k.upper(): v for k, v in ds.items()}


def rewrite_part_headers(headers: Sequence[tuple[str, str]], public_base: str) -> list[tuple[str, str]]:
    """A re-wrapped part's header fields: the content headers only, ``Content-Location`` rewritten by
    :func:`rewrite_uri` (left out when it cannot be placed; PS3.18 §8.6.1.2 makes it optional), the rest
    unchanged (the data is unchanged, so ``Content-Length`` stays true)."""
    out: list[tuple[str, str]] = []
    for name, value in headers:
        key = name.lower()
        if key not in _PART_HEADERS:
            continue
        if key == "content-location":
            uri = rewrite_uri(value, public_base)
            if uri is None:
                continue
            value = uri
        out.append((name, value))
    return out
