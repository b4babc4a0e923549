"""Settings: one frozen object built at the edge and passed into ``create_app``.

Sources, later wins: built-in defaults < a TOML file the operator names (``--config`` or ``FACADE_CONFIG``)
< environment variables ``FACADE_<KEY>``; any of them may name a file holding the value instead
(``FACADE_<KEY>_FILE``, ``<key>_file``: app.secret_files). Nothing below ``app.main`` reads the environment.

No file is read unless it is named: an installed package has no ``config/`` folder beside it, and a service whose
behaviour depends on where it was started from is a service nobody can reason about. The built-in defaults are
therefore the documented ones (``config/facade.toml`` in the repository lists each at its default, and a test
keeps the two equal), and they fail closed: ``auth_mode`` is ``smart``, so a service started with nothing but
``FACADE_DICOMWEB_URL`` refuses to start until it is given a key source or an explicit ``auth_mode = "open"``.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .secret_files import FileSettingError, from_environment, from_files
from .security.tokens import AuthSettings
from .source_settings import ResolvedSource, SourceError, SourceSettings, parse_sources

ENV_PREFIX = "FACADE_"
DEVICE_OBSERVER_UID = "2.25.47771164827287536617190863160507559093"
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # PS3.5 9.1


class SettingsError(ValueError):
    """A bad or missing setting; its message is one line meant for the operator."""


@dataclass(frozen=True)
class Settings:
    # One PACS (the shorthand), or ``sources``: several behind one FHIR base (app.source_settings; issue 21).
    dicomweb_url: str = ""
    sources: tuple[SourceSettings, ...] = ()
    # An IHE PIXm (ITI-83) patient identifier cross-reference manager's FHIR base (app.pacs.pixm); None: none.
    pixm_url: str | None = None
    # What the PACS is beyond DICOMweb (issue 22): "dicomweb" (nothing more) or "orthanc" (its REST API at
    # orthanc_url, default dicomweb_url without its DICOMweb root, is followed for changes every change_poll_interval
    # seconds: app.pacs.changes).
    pacs_kind: str = "dicomweb"
    orthanc_url: str | None = field(default=None, repr=False)
    change_poll_interval: float = 1.0
    public_url: str | None = None
    wado_url: str | None = None
    pacs_timezone: str | None = None
    default_count: int = 20
    max_count: int = 100
    uid_batch: int = 100
    instance_limit: int = 20000
    # A page's instance rows in up to this many concurrent QIDO requests where that pays (app.planning.instance_split:
    # two or more studies, or one study of many instances); 1: one request, as before issue 19.
    instance_query_split: int = 2
    prequery_limit: int = 2000
    cache_ttl: float = 60.0
    cache_max_bytes: int = 64 * 1024 * 1024
    upstream_connect_timeout: float = 3.0
    upstream_read_timeout: float = 20.0
    upstream_max_connections: int = 32
    # Faults (app.pacs.upstream, app.pacs.breaker): retries with backoff for GETs only; the circuit opens after
    # breaker_failures failures in a row (0: no breaker) for breaker_initial_reset seconds, doubled by each failed
    # probe up to breaker_reset (503 + Retry-After meanwhile). Every PACS call and retry of one FHIR request fits
    # into upstream_budget seconds; a read timeout is retried only with upstream_retry_timeouts.
    upstream_retries: int = 1
    upstream_backoff: float = 0.1
    upstream_budget: float = 20.0
    upstream_retry_timeouts: bool = False
    breaker_failures: int = 5
    breaker_reset: float = 30.0
    breaker_initial_reset: float = 1.0
    # Serve the last cached answer, marked as possibly stale, when the PACS fails (seconds kept past cache_ttl).
    cache_stale_ttl: float = 300.0
    # Shared cache for several replicas: redis://[:password@]host:port/db (empty: in-process memory).
    cache_redis_url: str | None = field(default=None, repr=False)
    cache_redis_prefix: str = "facade:qido"
    endpoint_id: str = "wado-rs"
    accession_system: str | None = None
    patient_identifier_system: str = "urn:x-imaging-facade:patient-id"
    issuer_system_prefix: str = "urn:x-imaging-facade:issuer:"
    issuer_systems: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "info"
    # EHR linkage (app.pacs.ehr): the EHR's FHIR base, the MRN's identifier system there (None: the one typed MR),
    # and a bearer token for it (Basic credentials can go in the URL instead). None: no EHR linked.
    ehr_fhir_url: str | None = None
    ehr_mrn_system: str | None = None
    ehr_token: str | None = field(default=None, repr=False)
    # Key-image manifests (app.usecases.manifests): accept POST ImagingSelection (a new KOS stored with STOW-RS); and
    # leave out of ImagingStudy the instances that IOCM rejection notes reject.
    manifests_writable: bool = True
    hide_rejected: bool = True
    # The facade as the device observer of the manifests it makes for callers without a SMART fhirUser (PS3.16
    # TID 1004 Device Observer UID). The default is stable (the same in every release, so one deployment's manifests
    # stay attributed to one device) and needs no registered root: the UUID-derived UID (PS3.5 B.2) of
    # uuid5(NAMESPACE_URL, "urn:x-imaging-facade:device-observer"). Give each deployment its own to tell them apart.
    device_observer_uid: str = DEVICE_OBSERVER_UID
    # Authorization (app.security.auth): "open" (demo only) or "smart" (bearer tokens: JWTs checked against a JWK Set,
    # or
    # RFC 7662 introspection). The SMART endpoints are published in /metadata and .well-known/smart-configuration.
    auth_mode: str = "smart"
    jwks_url: str | None = None
    jwks_file: str | None = None
    token_issuer: str | None = None
    token_audience: str | None = None
    introspection_url: str | None = None
    introspection_client_id: str | None = None
    introspection_client_secret: str | None = field(default=None, repr=False)
    auth_clock_skew: float = 60.0
    smart_authorization_endpoint: str | None = None
    smart_token_endpoint: str | None = None
    # PACS credentials: Basic in dicomweb_url's userinfo, or this bearer token; "forward" sends the caller's own
    # token to the PACS instead. wado_requires_token: Endpoint's requires-access-token (default: forward mode).
    pacs_token: str | None = field(default=None, repr=False)
    pacs_auth: str = "settings"
    wado_requires_token: bool | None = None
    # Operations: log lines as JSON objects ("json") or text; seconds uvicorn lets requests finish on SIGTERM.
    log_format: str = "json"
    shutdown_grace: float = 10.0
    # WADO-RS (issue 12; shared/docs/wado-gateway.md). "gateway": Endpoint.address is the facade's own WADO-RS base
    # (<public_url or the request's origin>/dicomweb) and the facade proxies to the PACS, which stays private;
    # "direct": Endpoint.address is wado_url. wado_access (gateway, auth_mode smart): "token", the viewer sends its
    # bearer token; "capability", each ImagingStudy contains its own Endpoint whose address carries an HMAC-signed
    # capability for that study (app.security.capability), valid capability_ttl seconds and never past the token's
    # exp. capability_keys: the first signs, all verify (rotation across replicas; removing one revokes what it
    # signed). cors_origins: origins (scheme://host[:port]) allowed by CORS on the FHIR API and /dicomweb, or "*".
    wado_mode: str = "gateway"
    wado_access: str = "token"
    capability_keys: tuple[str, ...] = field(default=(), repr=False)
    capability_ttl: float = 3600.0
    cors_origins: tuple[str, ...] = ()

    @property
    def federated(self) -> bool:
        """Several archives behind this base (``[[sources]]``), even a list of one: a source's rows without
        IssuerOfPatientID then belong to its ``issuer`` (or, without one, to a domain named after it)."""
        return bool(self.sources)

    @property
    def pacs_sources(self) -> tuple[ResolvedSource, ...]:
        """Every archive with its effective settings; the ``dicomweb_url`` shorthand is one source named "pacs"."""
        if self.sources:
            return tuple(s.resolve(self) for s in self.sources)
        return (SourceSettings(name="pacs", dicomweb_url=self.dicomweb_url).resolve(self),)

    @property
    def accepts_manifests(self) -> bool:
        """Whether POST ImagingSelection is served: manifests_writable, or with several archives, any archive's."""
        return any(s.manifests_writable for s in self.pacs_sources)

    @property
    def wado_base(self) -> str:
        """Endpoint.address: never with the credentials a DICOMweb URL may carry for the facade's own calls."""
        parts = urlsplit(self.wado_url or self.dicomweb_url)
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/")

    @property
    def auth(self) -> AuthSettings:
        return AuthSettings(
            mode=self.auth_mode,
            jwks_url=self.jwks_url,
            jwks_file=self.jwks_file,
            token_issuer=self.token_issuer,
            token_audience=self.token_audience,
            introspection_url=self.introspection_url,
            introspection_client_id=self.introspection_client_id,
            introspection_client_secret=self.introspection_client_secret,
            clock_skew=self.auth_clock_skew,
        )

    @property
    def requires_token(self) -> bool:
        """Whether a viewer must present its SMART token to the WADO-RS endpoint (SMART Imaging Access
        requires-access-token). Direct: whether the PACS checks it (the facade forwards tokens), unless
        wado_requires_token says otherwise. Gateway: the gateway checks it, in smart token mode; in open mode it
        serves everyone, and a capability address carries its permission itself."""
        if self.wado_mode == "direct":
            return self.wado_requires_token if self.wado_requires_token is not None else self.pacs_auth == "forward"
        return self.auth_mode == "smart" and self.wado_access == "token"

    @property
    def uses_capabilities(self) -> bool:
        """Each ImagingStudy carries a contained Endpoint with a capability address (gateway, smart, capability)."""
        return self.wado_mode == "gateway" and self.wado_access == "capability" and self.auth_mode == "smart"

    @property
    def tz(self) -> ZoneInfo | None:
        return ZoneInfo(self.pacs_timezone) if self.pacs_timezone else None

    def __post_init__(self) -> None:
        if self.sources and self.dicomweb_url:
            raise SettingsError("dicomweb_url and [[sources]] are mutually exclusive: give one PACS or a list")
        if not self.sources and not self.dicomweb_url:
            raise SettingsError("dicomweb_url is required (set FACADE_DICOMWEB_URL or [facade].dicomweb_url)")
        if self.sources and self.wado_mode == "direct":
            raise SettingsError("wado_mode = direct needs one PACS: with [[sources]] the gateway serves the images")
        if self.pacs_kind not in ("dicomweb", "orthanc"):
            raise SettingsError("pacs_kind must be dicomweb or orthanc")
        if not math.isfinite(self.change_poll_interval) or not 0.05 <= self.change_poll_interval <= 3600:
            raise SettingsError("change_poll_interval must be a number of seconds from 0.05 to 3600")
        for name in (
            "dicomweb_url",
            "orthanc_url",
            "pixm_url",
            "public_url",
            "wado_url",
            "ehr_fhir_url",
            "smart_authorization_endpoint",
            "smart_token_endpoint",
        ):
            value = getattr(self, name)
            if not value:
                continue
            parts = urlsplit(value)
            try:
                parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
            except ValueError:
                raise SettingsError(f"{name} has an invalid port: {_redact(value)!r}") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise SettingsError(f"{name} must be an absolute http(s) URL, got {_redact(value)!r}")
        if self.pacs_timezone:
            try:
                ZoneInfo(self.pacs_timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise SettingsError(f"pacs_timezone {self.pacs_timezone!r} is not an IANA time zone") from None
        for name in (
            "default_count",
            "max_count",
            "uid_batch",
            "instance_limit",
            "instance_query_split",
            "prequery_limit",
            "cache_max_bytes",
            "upstream_max_connections",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be a positive integer")
        if self.upstream_retries < 0 or self.breaker_failures < 0:
            raise SettingsError("upstream_retries and breaker_failures must not be negative")
        if self.cache_redis_url and not self.cache_redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("cache_redis_url must be a redis://, rediss:// or unix:// URL")
        if self.default_count > self.max_count:
            raise SettingsError("default_count must not exceed max_count")
        for name in (
            "cache_ttl",
            "upstream_connect_timeout",
            "upstream_read_timeout",
            "shutdown_grace",
            "upstream_backoff",
            "breaker_reset",
            "cache_stale_ttl",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise SettingsError(f"{name} must be a finite, non-negative number")
        for name in ("upstream_budget", "breaker_initial_reset"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise SettingsError(f"{name} must be a finite, positive number")
        try:
            self.auth.validate()
        except ValueError as exc:
            raise SettingsError(f"{exc} (FACADE_AUTH_MODE=open serves without authorization, for a demo)") from None
        if self.pacs_auth not in ("settings", "forward"):
            raise SettingsError("pacs_auth must be settings or forward")
        if self.log_format not in ("json", "text"):
            raise SettingsError("log_format must be json or text")
        if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", self.endpoint_id):
            raise SettingsError("endpoint_id must be a FHIR id (1-64 of A-Z a-z 0-9 - .)")
        if len(self.device_observer_uid) > 64 or not _UID.fullmatch(self.device_observer_uid):
            raise SettingsError("device_observer_uid must be a DICOM UID (PS3.5 9.1: digits and dots, at most 64)")
        self._check_wado()

    def _check_wado(self) -> None:
        if self.wado_mode not in ("gateway", "direct"):
            raise SettingsError("wado_mode must be gateway or direct")
        if self.wado_access not in ("token", "capability"):
            raise SettingsError("wado_access must be token or capability")
        if self.wado_access == "capability" and self.wado_mode != "gateway":
            # Only the gateway can check a capability: a PACS reached directly would ignore it.
            raise SettingsError("wado_access = capability needs wado_mode = gateway")
        # Never echo a key: the messages name the setting and the rule only.
        if any(len(key) < 32 for key in self.capability_keys):
            raise SettingsError("every capability_keys entry must be at least 32 characters (random, secret)")
        if self.uses_capabilities and not self.capability_keys:
            raise SettingsError("wado_access = capability needs capability_keys (FACADE_CAPABILITY_KEYS)")
        if not math.isfinite(self.capability_ttl) or self.capability_ttl <= 0:
            raise SettingsError("capability_ttl must be a finite, positive number")
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            raise SettingsError('cors_origins is either "*" alone or a list of origins')
        for origin in self.cors_origins:
            if origin != "*" and not _is_origin(origin):
                raise SettingsError(
                    f"cors_origins entries must be origins like https://app.example.org, got {origin[:80]!r}"
                )

    @classmethod
    def load(cls, environ: Mapping[str, str], *, config_file: str | Path | None = None) -> Settings:
        """Defaults < the TOML file named by ``config_file`` or ``FACADE_CONFIG`` (if any) < ``FACADE_*`` variables."""
        named = config_file or environ.get(ENV_PREFIX + "CONFIG")
        path = Path(named) if named else None
        values: dict[str, Any] = {}
        if path is not None and path.exists():
            try:
                document = tomllib.loads(path.read_text(encoding="utf-8"))
                values.update(document.get("facade", {}))
                if "sources" in document:  # top-level [[sources]] tables, beside [facade] (issue 21)
                    values["sources"] = document["sources"]
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise SettingsError(f"{path}: not valid TOML ({exc})") from None
            except OSError as exc:
                raise SettingsError(f"{path}: cannot be read ({exc.strerror})") from None
        elif path is not None:
            raise SettingsError(f"config file {path} does not exist")
        types = {f.name: f.type for f in fields(cls)}
        try:  # <key>_file / FACADE_<KEY>_FILE: the value is the file's content (secrets mounted by a platform)
            values = from_files(values, set(types), str(path))
            unknown = set(values) - set(types)
            if unknown:
                raise SettingsError(f"unknown setting(s) in {path}: {', '.join(sorted(unknown))}")
            values.update(from_environment(environ, ENV_PREFIX, list(types)))
        except FileSettingError as exc:
            raise SettingsError(str(exc)) from None
        if not values.get("dicomweb_url") and not values.get("sources"):
            raise SettingsError(
                "dicomweb_url is required (set FACADE_DICOMWEB_URL or [facade].dicomweb_url), or [[sources]]"
            )
        try:
            coerced = {name: _coerce(name, str(types[name]), value) for name, value in values.items()}
        except SourceError as exc:
            raise SettingsError(str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise SettingsError(str(exc)) from None
        return cls(**coerced)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        return cls.load(environ)


_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _coerce(name: str, type_name: str, value: Any) -> Any:
    """Turn TOML or environment strings into the declared field type."""
    if value == "" and "None" in type_name:
        return None
    if name == "sources":
        return parse_sources(value, where="[[sources]]" if isinstance(value, list) else "FACADE_SOURCES")
    if type_name.startswith("bool"):
        if value == "" and "None" in type_name:
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if type_name.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"{name} must be an integer")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if type_name.startswith("float"):
        if isinstance(value, bool):
            raise ValueError(f"{name} must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if type_name.startswith("Mapping"):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"{name} must be a JSON object of strings") from None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError(f"{name} must be a table of strings")
        return dict(value)
    if type_name.startswith("tuple"):
        # Comma-separated in the environment (and allowed so in TOML), or a TOML array of strings; blanks dropped.
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise ValueError(f"{name} must be a comma-separated string or a list of strings")
        return tuple(v.strip() for v in items if v.strip())
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _is_origin(value: str) -> bool:
    """An RFC 6454 origin as browsers send it in ``Origin``: scheme, host and optional port; nothing else."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and not (parts.path or parts.query or parts.fragment)
        and not value.endswith(("?", "#"))
    )


def _redact(url: str) -> str:
    """Hide credentials in a URL before it goes into a message."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
    return url
