"""SMART on FHIR authorization: bearer tokens in, an :class:`AuthContext` out (issue 5).

Two modes (:class:`AuthSettings`): ``open`` serves everyone (:data:`OPEN`: every scope, no patient context);
``smart`` requires a bearer token (RFC 6750 §2.1) and checks it one of two ways:

* **Local JWT validation** (``jwks_url`` or ``jwks_file``, plus ``token_issuer`` and ``token_audience``): the
  signature with a key from the authorization server's JWK Set (RFC 7517), only RS256 or ES256 (RFC 7518 §3.1;
  never ``none`` nor an HMAC, so a public key can never be used as a shared secret, RFC 8725 §2.1/§3.1), then
  ``iss``, ``aud``, ``exp`` (required), ``nbf``, ``iat`` with ``clock_skew`` leeway (RFC 7519 §4.1; RFC 9068 §4).
  Keys come only from the configured set, never from the token's ``jku``/``x5u``/``jwk`` headers.
* **Token introspection** (``introspection_url``; RFC 7662, SMART App Launch 2.x "Token Introspection"): the
  token is POSTed with our client credentials (HTTP Basic, RFC 7662 §2.1 / RFC 6749 §2.3.1); ``active`` false
  means 401. With both configured, a token shaped like a JWS goes the local way, anything else is introspected.

What a token grants comes from its scopes (app.security.scopes) and its ``patient`` launch context;
:meth:`AuthContext.require`
turns that into "allowed, confined to this patient" or "allowed, unconfined", or raises :class:`Forbidden`.

**Isolation key** (:attr:`AuthContext.cache_key`). Everything the facade's own authorization decision depends on is
the patient context and the set of unrestricted grants (``Scopes.grants``: one ``level/Type.letter`` per letter, so
``patient/*.read`` and ``patient/*.rs`` agree). The key is a SHA-256 over exactly those, so: two tokens with the
same patient and the same grants may share cached answers; user and system tokens without a patient share by
grant set; a different patient, or one extra or missing grant, never shares. Subject and client are deliberately
*not* in it: the facade has no per-user or per-client policy, so two users holding the same grants are given the
same data, and keying on them would only split the cache. When the PACS itself decides per caller (the bearer
token is forwarded to it), its answers depend on who asks: use :attr:`AuthContext.private_cache_key`, which adds
subject and client id. The key is a digest, not a secret: it hides the patient id from logs and dumps but is not
meant to resist guessing of low-entropy ids.

**Caching.** JWK Sets are kept for ``jwks_cache_ttl``; a token whose ``kid`` is not in the set causes one refetch,
at most one per :data:`JWKS_MIN_REFETCH` seconds, so forged ``kid`` values cannot hammer the key server. Active
introspection answers are kept until the earlier of the token's ``exp`` and ``introspection_cache_ttl`` (never
past ``exp``: RFC 7662 §4 leaves caching to the resource server, at the price of revocation latency); inactive
answers for :data:`NEGATIVE_CACHE_TTL` seconds (an inactive or expired token does not become active again, and a
client retrying a dead token in a loop should not turn into a loop on the authorization server). Entries are
keyed on the token's SHA-256, bounded in number, and concurrent misses for one token make one request.

**Errors.** 401 :class:`Unauthorized` carries an RFC 6750 §3 ``WWW-Authenticate`` challenge: without ``error``
when the request has no bearer token (§3.1), ``error="invalid_token"`` otherwise. 403 :class:`Forbidden` carries
``error="insufficient_scope"`` when scopes are missing. Key-server and introspection failures are
``UpstreamTimeout`` (504) / ``UpstreamUnavailable`` (503 + Retry-After) / ``UpstreamBadResponse`` (502). No message
ever contains the token, a secret, a URL or a claim value; all are fixed strings.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import jwt
import orjson
from cachetools import TTLCache
from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import FacadeError, UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from .scopes import ALL, LETTER, LEVELS, Interaction, Level, Scopes

logger = logging.getLogger(__name__)

REALM: Final = "imaging-fhir-facade"
# RFC 7518 §3.1: asymmetric signatures only (RSA and EC P-256 keys, see parse_jwks); never "none" nor HS*.
ALGORITHMS: Final = frozenset({"RS256", "ES256"})
MIN_RSA_BITS: Final = 2048  # RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used"
MAX_TOKEN_LENGTH: Final = 16384  # tokens travel in a header; anything longer is not a token we issued
JWKS_MIN_REFETCH: Final = 10.0  # seconds between unknown-kid refetches of the JWK Set
NEGATIVE_CACHE_TTL: Final = 10.0  # seconds an inactive introspection answer is kept
INTROSPECTION_CACHE_SIZE: Final = 10000
# RFC 9068 §4 wants typ "at+jwt"; SMART servers commonly send "JWT" or nothing, so those pass too, while a
# token declaring another type (an ID token profile, a logout token, ...) does not.
_TYPS: Final = frozenset({"jwt", "at+jwt", "application/at+jwt"})
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*", re.ASCII)  # RFC 6750 §2.1 b64token
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}", re.ASCII)  # FHIR R4 id datatype
_JWS = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*", re.ASCII)  # RFC 7515 §7.1 compact form
_UNQUOTABLE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")  # RFC 6750 §3 attribute value characters
_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1"})


# ---------------------------------------------------------------------------------------------------- errors


def challenge(
    realm: str = REALM, *, error: str | None = None, description: str | None = None, scope: str | None = None
) -> str:
    """An RFC 6750 §3 ``WWW-Authenticate`` value: ``Bearer realm="...", error="...", error_description="..."``."""
    params = [("realm", realm), ("error", error), ("error_description", description), ("scope", scope)]
    # §3: error, error_description and scope values use %x20-21 / %x23-5B / %x5D-7E only (no '"' or '\').
    quoted = [f'{k}="{_UNQUOTABLE.sub("", v)}"' for k, v in params if v is not None]
    return "Bearer " + ", ".join(quoted)


class Unauthorized(FacadeError):
    """401: no valid bearer token. ``error=None`` for a request without one (RFC 6750 §3.1: no error code then)."""

    status, code = 401, "login"

    def __init__(self, message: str, *, error: str | None = "invalid_token", realm: str = REALM) -> None:
        super().__init__(message)
        self.error = error
        value = challenge(realm, error=error, description=message) if error else challenge(realm)
        self.__dict__["headers"] = {"WWW-Authenticate": value}  # per instance; the class attribute stays {}


class Forbidden(FacadeError):
    """403: a valid token that does not allow the request. With ``scope``: RFC 6750 §3.1 ``insufficient_scope``."""

    status, code = 403, "forbidden"

    def __init__(self, message: str, *, scope: str | None = None, realm: str = REALM) -> None:
        super().__init__(message)
        if scope is not None:
            value = challenge(realm, error="insufficient_scope", description=message, scope=scope)
            self.__dict__["headers"] = {"WWW-Authenticate": value}


# ---------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AuthSettings:
    """How tokens are checked. ``mode`` is ``"open"`` (no authorization) or ``"smart"``."""

    mode: str = "open"
    jwks_url: str | None = None
    jwks_file: str | None = None
    token_issuer: str | None = None
    token_audience: str | None = None  # this server's identifier in ``aud``: normally its public FHIR base URL
    introspection_url: str | None = None
    introspection_client_id: str | None = None
    introspection_client_secret: str | None = field(default=None, repr=False)
    clock_skew: float = 60
    jwks_cache_ttl: float = 300
    introspection_cache_ttl: float = 300  # upper bound; an answer is never kept past the token's exp

    @property
    def jwt_enabled(self) -> bool:
        return self.mode == "smart" and bool(self.jwks_url or self.jwks_file)

    def validate(self) -> None:
        """Raise ValueError with one line naming the inconsistent settings (values, which may be secret, never)."""
        if self.mode not in ("open", "smart"):
            raise ValueError("auth_mode must be 'open' or 'smart'")
        if not 0 <= self.clock_skew <= 600:
            raise ValueError("auth_clock_skew must be between 0 and 600 seconds")
        if self.jwks_cache_ttl <= 0:
            raise ValueError("auth_jwks_cache_ttl must be positive")
        if self.introspection_cache_ttl < 0:
            raise ValueError("auth_introspection_cache_ttl must not be negative")
        if self.mode == "open":
            return
        if not (self.jwks_url or self.jwks_file or self.introspection_url):
            raise ValueError("auth_mode 'smart' needs jwks_url, jwks_file or introspection_url")
        if self.jwks_url and self.jwks_file:
            raise ValueError("set jwks_url or jwks_file, not both")
        if self.jwt_enabled and not (self.token_issuer and self.token_audience):
            raise ValueError("JWT validation (jwks_url/jwks_file) needs token_issuer and token_audience")
        for name, url in (("jwks_url", self.jwks_url), ("introspection_url", self.introspection_url)):
            if url and not _secure_url(url):
                raise ValueError(f"{name} must be an https URL (http only for a loopback host)")
        if bool(self.introspection_client_id) != bool(self.introspection_client_secret):
            raise ValueError("introspection_client_id and introspection_client_secret go together")


def _secure_url(url: str) -> bool:
    """RFC 7662 §4 / RFC 7517 §9.3: tokens and keys only over TLS, except to this machine."""
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)


# ---------------------------------------------------------------------------------------------------- context


def isolation_key(patient: str | None, scopes: Scopes, identity: Sequence[str | None] = ()) -> str:
    """SHA-256 (hex) of the patient context, the sorted grant set and an optional caller identity (module doc)."""
    material = json.dumps(["smart-isolation-v1", patient or "", sorted(scopes.grants), list(identity)])
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class AuthContext:
    """Who is asking and what the token allows. ``patient`` is a FHIR Patient id (launch context) or None."""

    subject: str | None
    client_id: str | None
    scopes: Scopes
    patient: str | None = None
    token: str | None = field(default=None, repr=False)  # the raw bearer token, for forwarding to the PACS only
    expires_at: float | None = None  # epoch seconds (the token's exp)

    @cached_property
    def cache_key(self) -> str:
        """Shared by callers whose authorization is identical: same patient context, same grants (module doc)."""
        return isolation_key(self.patient, self.scopes)

    @cached_property
    def private_cache_key(self) -> str:
        """:attr:`cache_key` narrowed to this subject and client: for answers the PACS computed for the caller."""
        return isolation_key(self.patient, self.scopes, (self.subject, self.client_id))

    def require(
        self, resource_type: str, interaction: Interaction, *, levels: Collection[Level] = LEVELS
    ) -> str | None:
        """The patient the request is confined to, None when unconfined; Forbidden when nothing grants it.

        A user- or system-level grant is unconfined: the facade has no user or client policy of its own and trusts
        the authorization server that issued the scope (SMART "scopes are used to delegate access"). A patient-level
        grant confines to the token's ``patient``; without one it grants nothing (SMART 2.x: granting patient-level
        scopes SHALL come with a ``patient`` launch context). Grants are not combined: the broadest single grant
        decides. ``levels`` lets the caller refuse a level outright (e.g. ``("patient", "user")`` where Backend
        Services, system scopes, are not offered).
        """
        granted = self.scopes.context(resource_type, interaction) & frozenset(levels)
        if granted - {"patient"}:
            return None
        if "patient" in granted:
            if self.patient is None:
                raise Forbidden("a patient-level scope needs a patient context, and the access token has none")
            return self.patient
        letter = LETTER[interaction]
        needed = " ".join(f"{level}/{resource_type}.{letter}" for level in LEVELS if level in levels)
        if self.scopes.restricted(resource_type, interaction):
            message = f"the access token allows {interaction} on {resource_type} only with search restrictions, "
            message += "which this server does not enforce"
        else:
            message = f"the access token does not allow {interaction} on {resource_type}"
        raise Forbidden(message, scope=needed)


OPEN: Final = AuthContext(subject=None, client_id=None, scopes=ALL)


def confine_patients(restriction: str | None, requested: Sequence[str]) -> tuple[str, ...]:
    """The patient ids a search may use under ``restriction`` (from :meth:`AuthContext.require`).

    ``requested`` is every patient id the search names (all values of every ``patient``/``subject`` parameter,
    reduced to logical ids in the token's namespace). Unconfined: unchanged. Confined and none named: the token's
    patient, as an implicit filter. Confined and any other patient named: 403, not an empty Bundle (Argonaut SMART
    Imaging Access, "Access control").
    """
    if restriction is None:
        return tuple(requested)
    if any(p != restriction for p in requested):
        raise Forbidden("the search names a patient outside the access token's patient context")
    return (restriction,)


# ---------------------------------------------------------------------------------------------------- pure checks


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 §2.1; the scheme is case-insensitive)."""
    if authorization is None or not authorization.strip():
        raise Unauthorized("an access token is required", error=None)
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":  # another scheme: the request carries no bearer credentials (§3.1)
        raise Unauthorized("a Bearer access token is required", error=None)
    token = credentials.strip()
    if len(token) > MAX_TOKEN_LENGTH or not _B64TOKEN.fullmatch(token):
        raise Unauthorized("the access token is malformed")
    return token


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthorized(f"the access token's {name} is not a number")
    return float(value)


def check_times(claims: Mapping[str, Any], now: float, skew: float, *, require_exp: bool = True) -> float | None:
    """``exp``/``nbf``/``iat`` against ``now`` with ``skew`` leeway (RFC 7519 §4.1.4-4.1.6); returns ``exp``."""
    exp = _number(claims, "exp")
    if exp is None and require_exp:
        raise Unauthorized("the access token has no expiry")
    if exp is not None and now >= exp + skew:
        raise Unauthorized("the access token has expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and now + skew < nbf:
        raise Unauthorized("the access token is not valid yet")
    iat = _number(claims, "iat")
    if iat is not None and iat > now + skew:
        raise Unauthorized("the access token was issued in the future")
    return exp


def context_from_claims(claims: Mapping[str, Any], token: str) -> AuthContext:
    """JWT claims or an introspection answer -> AuthContext (SMART: ``scope``, ``patient``, ``client_id``, ``sub``).

    Scopes come from ``scope`` (RFC 9068 §2.2.3, space-separated) or else ``scp`` (a list or a string); a value of
    another type grants nothing. A ``patient`` that is not a FHIR id rejects the token rather than being dropped.
    """
    raw = claims.get("scope")
    if raw is None:
        raw = claims.get("scp")
    if isinstance(raw, str) or (isinstance(raw, list) and all(isinstance(s, str) for s in raw)):
        scopes = Scopes.parse(raw)
    else:
        scopes = Scopes()
    patient = claims.get("patient")
    if patient is not None and not (isinstance(patient, str) and _FHIR_ID.fullmatch(patient)):
        raise Unauthorized("the access token's patient context is not a FHIR id")
    sub = claims.get("sub")
    client_id = claims.get("client_id")
    if not isinstance(client_id, str):
        client_id = claims.get("azp")  # OpenID Connect authorized party, where client_id is absent
    return AuthContext(
        subject=sub if isinstance(sub, str) else None,
        client_id=client_id if isinstance(client_id, str) else None,
        scopes=scopes,
        patient=patient,
        token=token,
        expires_at=_number(claims, "exp"),
    )


@dataclass(frozen=True)
class SigningKey:
    kid: str | None
    alg: str
    key: Any  # a cryptography public key object


def parse_jwks(document: Any) -> tuple[SigningKey, ...]:
    """The usable verification keys of a JWK Set (RFC 7517 §5): RSA ≥ 2048 bits or EC P-256, public, for ``sig``.

    Keys of other types or curves, ``use: enc``, a conflicting ``alg``, private keys and broken keys are skipped,
    not fatal: one odd key must not take down the others. Raises ValueError if the document is not a JWK Set.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set")
    keys: list[SigningKey] = []
    for jwk_data in document["keys"]:
        if not isinstance(jwk_data, dict) or "d" in jwk_data or jwk_data.get("use", "sig") != "sig":
            continue
        ops = jwk_data.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        kty, alg = jwk_data.get("kty"), jwk_data.get("alg")
        wanted = "RS256" if kty == "RSA" else "ES256" if kty == "EC" and jwk_data.get("crv") == "P-256" else None
        if wanted is None or alg not in (None, wanted):
            continue
        try:
            key = jwt.PyJWK(jwk_data, algorithm=wanted).key
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            continue
        kid = jwk_data.get("kid")
        keys.append(SigningKey(kid if isinstance(kid, str) else None, wanted, key))
    return tuple(keys)


def verify_jwt(
    token: str, keys: Sequence[SigningKey], *, issuer: str, audience: str, now: float, skew: float
) -> AuthContext:
    """Check a JWS-compact access token against a key set and return its context (pure).

    The key is chosen by the header's ``kid`` and ``alg`` (RFC 7515 §4.1.4); without a ``kid`` every key of the
    algorithm is tried. Only then are ``iss`` and ``aud`` compared, and the times checked with ``skew``.
    """
    header = _header(token)
    alg, kid = header["alg"], header.get("kid")
    candidates = [k for k in keys if k.alg == alg and (kid is None or k.kid == kid)]
    if not candidates:
        raise Unauthorized("the access token was signed with an unknown key")
    claims: dict[str, Any] | None = None
    for key in candidates:
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=issuer,
                audience=audience,
                # times are checked below against the injected clock, not PyJWT's wall clock
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": ["iss", "aud"]},
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidIssuerError:
            raise Unauthorized("the access token was not issued by the trusted authorization server") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("the access token is not meant for this server") from None
        except jwt.MissingRequiredClaimError as exc:
            claim = "iss" if exc.claim == "iss" else "aud"
            raise Unauthorized(f"the access token lacks the {claim} claim") from None
        except jwt.PyJWTError:
            raise Unauthorized("the access token could not be verified") from None
    if claims is None:
        raise Unauthorized("the access token's signature is not valid")
    check_times(claims, now, skew)
    return context_from_claims(claims, token)


def _header(token: str) -> dict[str, Any]:
    """The JOSE header, vetted before any key is looked at: a listed alg, an acceptable typ, a string kid."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthorized("the access token is malformed") from None
    if header.get("alg") not in ALGORITHMS:
        raise Unauthorized("the access token's signature algorithm is not accepted")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _TYPS):
        raise Unauthorized("the token is not an access token")
    if header.get("kid") is not None and not isinstance(header.get("kid"), str):
        raise Unauthorized("the access token is malformed")
    return header


def interpret_introspection(
    body: Any, token: str, *, now: float, settings: AuthSettings
) -> tuple[AuthContext | str, float]:
    """An RFC 7662 §2.2 answer -> (context, or the 401 message) and the time until which it may be cached.

    ``iss`` is not compared: SMART puts the ID token's issuer there, which need not be the token issuer. ``aud``,
    when present, must name us. An ``exp`` already past (by our clock, with skew) is inactive whatever ``active``
    says.
    """
    if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
        raise UpstreamBadResponse("the token introspection answer is not an RFC 7662 response")
    negative = now + min(NEGATIVE_CACHE_TTL, settings.introspection_cache_ttl)
    if not body["active"]:
        return "the access token is not active", negative
    try:
        exp = check_times(body, now, settings.clock_skew, require_exp=False)
        aud = body.get("aud")
        if aud is not None and settings.token_audience:
            auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if settings.token_audience not in auds:
                raise Unauthorized("the access token is not meant for this server")
        context = context_from_claims(body, token)
    except Unauthorized as exc:
        return exc.message, negative
    until = now + settings.introspection_cache_ttl
    return context, until if exp is None else min(until, exp)


# ---------------------------------------------------------------------------------------------------- I/O shell


class Authorizer:
    """Turns an ``Authorization`` header into an :class:`AuthContext`; owns the JWK Set and introspection caches.

    ``client`` is used for the key server and the introspection endpoint with absolute URLs and explicit (or no)
    credentials; it must not carry default headers meant for the PACS.
    """

    def __init__(
        self, settings: AuthSettings, client: httpx.AsyncClient, *, clock: Callable[[], float] = time.time
    ) -> None:
        settings.validate()
        self._settings = settings
        self._client = client
        self._clock = clock
        self._keys: tuple[SigningKey, ...] | None = None
        self._keys_at = 0.0
        self._keys_lock = asyncio.Lock()
        self._auth = httpx.Auth()  # no credentials, and never the client's defaults (those are the PACS's)
        if settings.introspection_client_id and settings.introspection_client_secret:
            self._auth = httpx.BasicAuth(settings.introspection_client_id, settings.introspection_client_secret)
        ttl = max(settings.introspection_cache_ttl, NEGATIVE_CACHE_TTL)
        self._answers: TTLCache[bytes, tuple[AuthContext | str, float]] = TTLCache(
            maxsize=INTROSPECTION_CACHE_SIZE, ttl=ttl, timer=clock
        )
        self._inflight: dict[bytes, asyncio.Future[AuthContext | str]] = {}
        self.jwks_loads = 0  # counters, for tests and metrics
        self.introspections = 0

    async def authenticate(self, authorization: str | None) -> AuthContext:
        """The caller's context; Unauthorized (401) for a missing or bad token, Upstream* when a check fails."""
        if self._settings.mode == "open":
            return OPEN
        token = bearer_token(authorization)
        if self._settings.jwt_enabled and _JWS.fullmatch(token):
            return await self._verify(token)
        if self._settings.introspection_url:
            return await self._introspect(token)
        raise Unauthorized("the access token is not a signed JWT")

    # -- JWT

    async def _verify(self, token: str) -> AuthContext:
        kid = _header(token).get("kid")
        keys = await self._key_set(refresh=False)
        if kid is not None and not any(k.kid == kid for k in keys):  # rotated keys: look again, rate-limited
            keys = await self._key_set(refresh=True)
        issuer, audience = self._settings.token_issuer, self._settings.token_audience
        assert issuer is not None and audience is not None  # validate(): JWT mode has both
        return verify_jwt(
            token, keys, issuer=issuer, audience=audience, now=self._clock(), skew=self._settings.clock_skew
        )

    async def _key_set(self, *, refresh: bool) -> tuple[SigningKey, ...]:
        async with self._keys_lock:  # one load at a time; waiters then see the fresh set
            age = self._clock() - self._keys_at
            if self._keys is not None and age < (JWKS_MIN_REFETCH if refresh else self._settings.jwks_cache_ttl):
                return self._keys
            try:
                keys = parse_jwks(orjson.loads(await self._load_jwks()))
            except (orjson.JSONDecodeError, ValueError):
                raise UpstreamBadResponse("the authorization server's signing keys are not a JWK Set") from None
            if not keys:
                logger.warning("the JWK Set has no usable RS256/ES256 signing key")
            self._keys, self._keys_at = keys, self._clock()
            return keys

    async def _load_jwks(self) -> bytes:
        self.jwks_loads += 1
        if self._settings.jwks_file:
            try:
                return await asyncio.to_thread(Path(self._settings.jwks_file).read_bytes)
            except OSError as exc:
                logger.error("cannot read the JWK Set file: %s", exc.strerror)
                raise UpstreamUnavailable("the authorization server's signing keys are unavailable") from None
        assert self._settings.jwks_url is not None
        try:
            r = await self._client.get(
                self._settings.jwks_url, headers={"Accept": "application/json"}, auth=httpx.Auth()
            )
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("the authorization server's key set did not arrive in time") from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable("the authorization server's key set is unreachable") from exc
        if r.status_code != 200:
            logger.warning("JWK Set request answered HTTP %s", r.status_code)
            raise UpstreamUnavailable("the authorization server's signing keys are unavailable")
        return r.content

    # -- introspection

    async def _introspect(self, token: str) -> AuthContext:
        key = hashlib.sha256(token.encode()).digest()
        hit = self._answers.get(key) if self._settings.introspection_cache_ttl > 0 else None
        if hit is not None and hit[1] > self._clock():
            answer = hit[0]
        else:
            task = self._inflight.get(key)
            if task is None:
                task = asyncio.ensure_future(self._introspect_once(token, key))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
                self._inflight[key] = task
            answer = await asyncio.shield(task)
        if isinstance(answer, str):
            raise Unauthorized(answer)
        return answer

    async def _introspect_once(self, token: str, key: bytes) -> AuthContext | str:
        try:
            body = await self._post(token)
            answer, until = interpret_introspection(body, token, now=self._clock(), settings=self._settings)
            if self._settings.introspection_cache_ttl > 0 and until > self._clock():
                self._answers[key] = (answer, until)
            return answer
        finally:
            self._inflight.pop(key, None)

    async def _post(self, token: str) -> Any:
        assert self._settings.introspection_url is not None
        self.introspections += 1
        try:
            r = await self._client.post(
                self._settings.introspection_url,
                data={"token": token, "token_type_hint": "access_token"},
                headers={"Accept": "application/json"},
                auth=self._auth,
            )
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("the token introspection service did not answer in time") from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable("the token introspection service is unreachable") from exc
        if r.status_code != 200:
            logger.warning("token introspection answered HTTP %s", r.status_code)
            raise UpstreamUnavailable("the token introspection service could not check the access token")
        try:
            return orjson.loads(r.content)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse("the token introspection answer is not JSON") from None
