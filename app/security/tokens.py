"""Token verification (pure): :class:`AuthSettings`, the bearer header, JWT signature and claims against a JWK Set,
and the reading of an RFC 7662 introspection answer; each ends in an :class:`~app.security.context.AuthContext`
or an :class:`~app.security.context.Unauthorized`. How keys and introspection answers are fetched and cached is
app.security.auth (the I/O shell); the rules followed are in its module docstring.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import UpstreamBadResponse
from .context import AuthContext, Unauthorized, User
from .scopes import Scopes

logger = logging.getLogger(__name__)

# RFC 7518 §3.1: asymmetric signatures only (RSA and EC P-256 keys, see parse_jwks); never "none" nor HS*.
ALGORITHMS: Final = frozenset({"RS256", "ES256"})
MIN_RSA_BITS: Final = 2048  # RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used"
MAX_TOKEN_LENGTH: Final = 16384  # tokens travel in a header; anything longer is not a token we issued
NEGATIVE_CACHE_TTL: Final = 10.0  # seconds an inactive introspection answer is kept
# RFC 9068 §4 wants typ "at+jwt"; SMART servers commonly send "JWT" or nothing, so those pass too, while a
# token declaring another type (an ID token profile, a logout token, ...) does not.
_TYPS: Final = frozenset({"jwt", "at+jwt", "application/at+jwt"})
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*", re.ASCII)  # RFC 6750 §2.1 b64token
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}", re.ASCII)  # FHIR R4 id datatype
_JWS = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*", re.ASCII)  # RFC 7515 §7.1 compact form
_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1"})
# fhirUser: an absolute http(s) URL or a relative reference, ending in one of the types SMART allows and a FHIR id.
_FHIR_USER = re.compile(
    r"(?:https?://[A-Za-z0-9\-._~%!$&'()*+,;=:@/]+/)?(?:Patient|Practitioner|PractitionerRole|RelatedPerson|Person)"
    r"/[A-Za-z0-9\-.]{1,64}",
    re.ASCII,
)
_MAX_FHIR_USER: Final = 1024
_MAX_NAME: Final = 256


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
        user=user_from_claims(claims),
    )


def user_from_claims(claims: Mapping[str, Any]) -> User:
    """The user the token names: ``fhirUser`` (SMART App Launch: "a FHIR resource URL" of a Patient, Practitioner,
    PractitionerRole, RelatedPerson or Person; an introspection answer carries it too) and the OpenID Connect names
    (Core 1.0 §5.1). A malformed value is dropped, not fatal: these name an author and grant nothing."""
    fhir_user = claims.get("fhirUser")
    if not (isinstance(fhir_user, str) and len(fhir_user) <= _MAX_FHIR_USER and _FHIR_USER.fullmatch(fhir_user)):
        fhir_user = None
    names = [claims.get(k) for k in ("name", "family_name", "given_name")]
    name, family, given = (v.strip()[:_MAX_NAME] or None if isinstance(v, str) else None for v in names)
    return User(fhir_user=fhir_user, name=name, family_name=family, given_name=given)


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
