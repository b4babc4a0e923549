"""SMART on FHIR authorization: bearer tokens in, an :class:`AuthContext` out (issue 5). This module is the I/O shell
(:class:`Authorizer`: JWK Sets fetched and cached, introspection requests); the pure token checks are
app.security.tokens, what a context allows and the 401/403 errors app.security.context.

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
:meth:`AuthContext.require` turns that into "allowed, confined to this patient" or "allowed, unconfined", or
raises :class:`Forbidden`.

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
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
from cachetools import TTLCache

from ..errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from .context import OPEN, AuthContext, Unauthorized
from .tokens import (
    _JWS,
    NEGATIVE_CACHE_TTL,
    AuthSettings,
    SigningKey,
    _header,
    bearer_token,
    interpret_introspection,
    parse_jwks,
    verify_jwt,
)

logger = logging.getLogger(__name__)

JWKS_MIN_REFETCH: Final = 10.0  # seconds between unknown-kid refetches of the JWK Set
INTROSPECTION_CACHE_SIZE: Final = 10000
VERIFIED_CACHE_SIZE: Final = 10000  # verified JWTs kept by SHA-256 (issue 14: a signature check per request)


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
        # A verified JWT's context, by the token's SHA-256, until its exp (with the same skew verify_jwt allows);
        # never longer than the JWK Set is kept, so a key removed from the set stops working as soon as it would
        # without this cache. Only successes are kept.
        self._verified: TTLCache[bytes, AuthContext] = TTLCache(
            maxsize=VERIFIED_CACHE_SIZE, ttl=settings.jwks_cache_ttl, timer=clock
        )
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

    def known(self, authorization: str | None) -> AuthContext | None:
        """The caller's context when :meth:`authenticate` has established it before and would return it now without
        any I/O or signature check (open mode, a verified JWT still valid, an active introspection answer still
        kept); else None, also for a bad token: the caller then goes the full way (app.http.warm)."""
        if self._settings.mode == "open":
            return OPEN
        try:
            token = bearer_token(authorization)
        except Unauthorized:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        if self._settings.jwt_enabled and _JWS.fullmatch(token):
            return self._kept_jwt(digest)
        if self._settings.introspection_url and self._settings.introspection_cache_ttl > 0:
            hit = self._answers.get(digest)
            if hit is not None and hit[1] > self._clock() and isinstance(hit[0], AuthContext):
                return hit[0]
        return None

    # -- JWT

    def _kept_jwt(self, digest: bytes) -> AuthContext | None:
        kept = self._verified.get(digest)
        if (
            kept is not None
            and kept.expires_at is not None
            and self._clock() < kept.expires_at + self._settings.clock_skew
        ):
            return kept
        return None

    async def _verify(self, token: str) -> AuthContext:
        digest = hashlib.sha256(token.encode()).digest()
        if (kept := self._kept_jwt(digest)) is not None:
            return kept
        ctx = await self._verify_signed(token)
        if ctx.expires_at is not None:
            self._verified[digest] = ctx
        return ctx

    async def _verify_signed(self, token: str) -> AuthContext:
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
