"""The archives behind one FHIR base (issue 21): ``[[sources]]`` in the TOML file, or ``FACADE_SOURCES`` as JSON.

One PACS is the shorthand ``dicomweb_url``; several are a list of sources, each with a unique ``name`` (shown in
outcomes, metrics and logs, never its URL), its DICOMweb root and the ``issuer`` its rows without
IssuerOfPatientID belong to (IHE XCA: a community's assigning authority). A source may override a few settings of
the ``[facade]`` table for itself only (its credentials, clock, time limits, breaker, whether manifests are
stored there); :meth:`SourceSettings.resolve` gives the effective values.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .secret_files import FileSettingError, from_files

_NAME = re.compile(r"[a-z0-9-]{1,32}")
# IssuerOfPatientID is LO: at most 64 characters, no backslash or control characters (PS3.5 6.2).
_ISSUER = re.compile(r"[^\\\x00-\x1f]{1,64}")

# The [facade] settings a source may override for itself (issue 21), with their types.
OVERRIDABLE: Mapping[str, type] = {
    "pacs_token": str,
    "pacs_timezone": str,
    "upstream_connect_timeout": float,
    "upstream_read_timeout": float,
    "upstream_budget": float,
    "breaker_failures": int,
    "breaker_reset": float,
    "manifests_writable": bool,
    "pacs_kind": str,
    "orthanc_url": str,
}


class SourceError(ValueError):
    """A bad ``[[sources]]`` entry; its message is one line meant for the operator (never a URL's credentials)."""


@dataclass(frozen=True)
class SourceSettings:
    name: str
    dicomweb_url: str = field(repr=False)  # may carry Basic credentials
    issuer: str | None = None
    pacs_token: str | None = field(default=None, repr=False)
    pacs_timezone: str | None = None
    upstream_connect_timeout: float | None = None
    upstream_read_timeout: float | None = None
    upstream_budget: float | None = None
    breaker_failures: int | None = None
    breaker_reset: float | None = None
    manifests_writable: bool | None = None
    pacs_kind: str | None = None
    orthanc_url: str | None = field(default=None, repr=False)

    def resolve(self, defaults: Any) -> ResolvedSource:
        """This source's effective settings: its own where given, else the facade's (``defaults``: the Settings)."""
        own = {name: getattr(self, name) for name in OVERRIDABLE}
        values = {name: getattr(defaults, name) if value is None else value for name, value in own.items()}
        if self.orthanc_url is None:
            # the facade's orthanc_url names its one PACS; with a list, each archive's defaults from its own URL
            values["orthanc_url"] = None if defaults.sources else defaults.orthanc_url
        values["orthanc_url"] = values["orthanc_url"] or rest_root(self.dicomweb_url)
        return ResolvedSource(name=self.name, dicomweb_url=self.dicomweb_url, issuer=self.issuer, **values)


@dataclass(frozen=True)
class ResolvedSource:
    """One archive with every setting decided."""

    name: str
    dicomweb_url: str = field(repr=False)
    issuer: str | None
    pacs_token: str | None = field(repr=False)
    pacs_timezone: str | None
    upstream_connect_timeout: float
    upstream_read_timeout: float
    upstream_budget: float
    breaker_failures: int
    breaker_reset: float
    manifests_writable: bool
    pacs_kind: str = "dicomweb"
    orthanc_url: str = field(default="", repr=False)  # its Orthanc REST API (pacs_kind = orthanc)


def parse_sources(raw: Any, *, where: str) -> tuple[SourceSettings, ...]:
    """``[[sources]]`` tables (a list of dicts) or the same list as a JSON string (``FACADE_SOURCES``)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise SourceError(f"{where} must be a JSON list of source objects") from None
    if not isinstance(raw, list) or not raw:
        raise SourceError(f"{where} must be a non-empty list of sources")
    sources = tuple(_source(item, i, where) for i, item in enumerate(raw))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise SourceError(f"{where}: source names must be unique ({', '.join(twice)} given twice)")
    return sources


def _source(item: Any, index: int, where: str) -> SourceSettings:
    if not isinstance(item, Mapping):
        raise SourceError(f"{where}[{index}] must be a table with name and dicomweb_url")
    known = {f.name for f in fields(SourceSettings)}
    try:  # pacs_token_file = "/run/secrets/..." (issue 23)
        item = from_files(item, known, f"{where}[{index}]")
    except FileSettingError as exc:
        raise SourceError(str(exc)) from None
    unknown = sorted(set(item) - known)
    if unknown:
        raise SourceError(f"{where}[{index}]: unknown setting(s) {', '.join(unknown)}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SourceError(f"{where}[{index}].name must be 1-32 characters of a-z, 0-9 and -")
    label = f"source {name!r}"
    url = item.get("dicomweb_url")
    if not isinstance(url, str) or not _is_http_url(url):
        raise SourceError(f"{label}: dicomweb_url must be an absolute http(s) URL")
    issuer = item.get("issuer")
    if issuer is not None and (not isinstance(issuer, str) or not _ISSUER.fullmatch(issuer)):
        raise SourceError(f"{label}: issuer must be 1-64 characters without a backslash (an IssuerOfPatientID)")
    values: dict[str, Any] = {"name": name, "dicomweb_url": url.rstrip("/"), "issuer": issuer}
    for key, kind in OVERRIDABLE.items():
        if key in item:
            values[key] = _coerce(label, key, kind, item[key])
    return SourceSettings(**values)


def _coerce(label: str, key: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise SourceError(f"{label}: {key} must be true or false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SourceError(f"{label}: {key} must be a non-negative integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise SourceError(f"{label}: {key} must be a finite, non-negative number")
        if key == "upstream_budget" and value <= 0:
            raise SourceError(f"{label}: upstream_budget must be positive")
        return float(value)
    if not isinstance(value, str):
        raise SourceError(f"{label}: {key} must be a string")
    if key == "pacs_kind" and value not in ("dicomweb", "orthanc"):
        raise SourceError(f"{label}: pacs_kind must be dicomweb or orthanc")
    if key == "orthanc_url" and not _is_http_url(value):
        raise SourceError(f"{label}: orthanc_url must be an absolute http(s) URL")
    if key == "pacs_timezone":
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise SourceError(f"{label}: pacs_timezone {value!r} is not an IANA time zone") from None
    return value


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def rest_root(dicomweb_url: str) -> str:
    """The Orthanc REST API under a DICOMweb root: the URL without its last path segment (``/dicom-web``)."""
    return dicomweb_url.rstrip("/").rpartition("/")[0]
