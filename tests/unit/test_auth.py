"""SMART authorization core (app.security.auth): bearer parsing, JWT validation against a JWK Set (file and URL),
RFC 7662 introspection, caching, what a context allows, and the discovery documents.

Keys are generated here (RSA 2048, EC P-256); tokens are signed with PyJWT; the key server and the introspection
endpoint are httpx.MockTransport handlers; time is an injected clock. Each test drives its own event loop with
asyncio.run, as tests/unit/test_cache.py does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhir.resources.R4B.capabilitystatement import CapabilityStatementRestSecurity
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from app.errors import FacadeError, UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from app.security.auth import Authorizer
from app.security.context import OPEN, AuthContext, Forbidden, Unauthorized, User, challenge, confine_patients
from app.security.scopes import Scopes
from app.security.smart_discovery import capability_security, smart_configuration
from app.security.tokens import AuthSettings, bearer_token, parse_jwks

NOW = 1_700_000_000.0
ISS = "https://auth.example.org"
AUD = "https://imaging.example.org/fhir/R4"
JWKS_URL = "https://auth.example.org/.well-known/jwks.json"
INTROSPECT_URL = "https://auth.example.org/introspect"
SECRET = "s3cret-introspection-password"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(private_key, kid: str | None, **extra) -> dict:
    public = private_key.public_key()
    data = RSAAlgorithm.to_jwk(public, as_dict=True) if isinstance(public, rsa.RSAPublicKey) else None
    if data is None:
        data = ECAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        data["kid"] = kid
    return {**data, **extra}


JWKS = {"keys": [jwk(RSA_KEY, "rsa1", use="sig", alg="RS256"), jwk(EC_KEY, "ec1")]}


def claims(**overrides) -> dict:
    base = {
        "iss": ISS,
        "aud": AUD,
        "sub": "user-7",
        "client_id": "viewer-app",
        "scope": "launch/patient openid fhirUser patient/ImagingStudy.rs",
        "patient": "123",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(key=RSA_KEY, alg="RS256", kid: str | None = "rsa1", headers: dict | None = None, **claim_overrides) -> str:
    hdr = dict(headers or {})
    if kid is not None:
        hdr["kid"] = kid
    return jwt.encode(claims(**claim_overrides), key, algorithm=alg, headers=hdr)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, payload: dict, signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return head + "." + b64(signature)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Server:
    """The authorization server: a JWK Set and an introspection endpoint, counting requests."""

    def __init__(self, jwks: dict | None = None, answers: dict[str, dict] | None = None) -> None:
        self.jwks = jwks if jwks is not None else JWKS
        self.answers = answers or {}
        self.requests: list[httpx.Request] = []
        self.fail: Exception | int | bytes | None = None
        self.delay = 0.0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(self.fail, Exception):
            raise self.fail
        if isinstance(self.fail, int):
            return httpx.Response(self.fail, text="no")
        if isinstance(self.fail, bytes):
            return httpx.Response(200, content=self.fail)
        if request.url == JWKS_URL:
            return httpx.Response(200, json=self.jwks)
        if request.url == INTROSPECT_URL and request.method == "POST":
            form = parse_qs(request.content.decode())
            return httpx.Response(200, json=self.answers.get(form["token"][0], {"active": False}))
        return httpx.Response(404)

    def count(self, url: str) -> int:
        return sum(1 for r in self.requests if r.url == url)


def smart(**kw) -> AuthSettings:
    defaults = {"mode": "smart", "jwks_url": JWKS_URL, "token_issuer": ISS, "token_audience": AUD}
    return AuthSettings(**{**defaults, **kw})


INTROSPECTION = {
    "mode": "smart",
    "jwks_url": None,
    "introspection_url": INTROSPECT_URL,
    "introspection_client_id": "imaging-facade",
    "introspection_client_secret": SECRET,
    "token_issuer": None,
    "token_audience": AUD,
}


@contextlib.asynccontextmanager
async def authorizer(settings: AuthSettings, server: Server | None = None, clock: Clock | None = None, **client_kw):
    transport = httpx.MockTransport(server or Server())
    async with httpx.AsyncClient(transport=transport, **client_kw) as client:
        yield Authorizer(settings, client, clock=clock or Clock())


def run(coro):
    return asyncio.run(coro)


def authenticate(settings: AuthSettings, header: str | None, server: Server | None = None, clock=None):
    async def go():
        async with authorizer(settings, server, clock) as a:
            return await a.authenticate(header)

    return run(go())


def rejected(settings: AuthSettings, header: str | None, server: Server | None = None, clock=None) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        authenticate(settings, header, server, clock)
    exc = info.value
    assert exc.status == 401 and exc.code == "login"
    secret_free(exc, header)
    return exc


def secret_free(exc: FacadeError, header: str | None = None) -> None:
    """No error text or header names the token, a secret, or the authorization server's URLs."""
    texts = [exc.message, str(exc), *exc.headers.values()]
    forbidden = [SECRET, "auth.example.org", JWKS_URL, INTROSPECT_URL]
    credentials = (header or "").partition(" ")[2].strip()
    if len(credentials) >= 8:  # shorter test tokens ("t") are ordinary words
        forbidden.append(credentials)
    for text in texts:
        for bad in forbidden:
            assert bad not in text


# ------------------------------------------------------------------------------------------------ settings


class TestSettings:
    def test_open_default_is_valid(self):
        AuthSettings().validate()
        assert AuthSettings().mode == "open"

    @pytest.mark.parametrize(
        ("kw", "fragment"),
        [
            ({"mode": "oauth"}, "auth_mode"),
            ({"mode": "smart"}, "needs jwks_url, jwks_file or introspection_url"),
            ({"mode": "smart", "jwks_url": JWKS_URL}, "token_issuer and token_audience"),
            (
                {"mode": "smart", "jwks_file": "/k.json", "token_issuer": ISS},
                "token_issuer and token_audience",
            ),
            (
                {"mode": "smart", "jwks_url": JWKS_URL, "jwks_file": "/k", "token_issuer": ISS, "token_audience": AUD},
                "not both",
            ),
            ({"mode": "smart", "introspection_url": "http://auth.example.org/i"}, "https"),
            ({"mode": "smart", "introspection_url": "ftp://auth.example.org/i"}, "https"),
            ({"mode": "smart", "introspection_url": "/introspect"}, "https"),
            (
                {"mode": "smart", "introspection_url": INTROSPECT_URL, "introspection_client_id": "x"},
                "go together",
            ),
            (
                {"mode": "smart", "introspection_url": INTROSPECT_URL, "introspection_client_secret": SECRET},
                "go together",
            ),
            ({"clock_skew": -1}, "clock_skew"),
            ({"jwks_cache_ttl": 0}, "jwks_cache_ttl"),
            ({"introspection_cache_ttl": -5}, "introspection_cache_ttl"),
        ],
    )
    def test_inconsistent_settings_are_one_line(self, kw, fragment):
        with pytest.raises(ValueError, match=re.escape(fragment)) as info:
            AuthSettings(**kw).validate()
        message = str(info.value)
        assert "\n" not in message and SECRET not in message and "example.org" not in message

    def test_valid_smart_settings(self):
        smart().validate()
        smart(jwks_url=None, jwks_file="/etc/jwks.json").validate()
        AuthSettings(**INTROSPECTION).validate()
        AuthSettings(mode="smart", introspection_url="http://127.0.0.1:9000/introspect").validate()
        AuthSettings(mode="smart", introspection_url="http://localhost/introspect").validate()

    def test_secret_not_in_repr(self):
        assert SECRET not in repr(AuthSettings(**INTROSPECTION))

    def test_authorizer_validates(self):
        async def go():
            async with httpx.AsyncClient() as client:
                Authorizer(AuthSettings(mode="smart"), client)

        with pytest.raises(ValueError):
            run(go())


# ------------------------------------------------------------------------------------------------ headers


class TestBearer:
    @pytest.mark.parametrize("header", [None, "", "   "])
    def test_missing_has_no_error_code(self, header):
        exc = rejected(smart(), header)
        assert exc.error is None
        # RFC 6750 §3.1: no error code, nor other error information, when no credentials were sent
        assert exc.headers == {"WWW-Authenticate": 'Bearer realm="imaging-fhir-facade"'}

    def test_other_scheme_counts_as_missing(self):
        exc = rejected(smart(), "Basic dXNlcjpwYXNz")
        assert exc.error is None and "error=" not in exc.headers["WWW-Authenticate"]

    @pytest.mark.parametrize(
        "header", ["Bearer", "Bearer ", "Bearer a b", "Bearer ä", "Bearer a,b", 'Bearer "x"', "Bearer " + "a" * 20000]
    )
    def test_malformed_is_invalid_token(self, header):
        exc = rejected(smart(), header)
        assert exc.error == "invalid_token"
        assert exc.headers["WWW-Authenticate"] == (
            'Bearer realm="imaging-fhir-facade", error="invalid_token", '
            'error_description="the access token is malformed"'
        )

    def test_scheme_is_case_insensitive(self):
        assert bearer_token("bearer abc.def-_~+/=") == "abc.def-_~+/="
        assert bearer_token("BEARER   tok==") == "tok=="

    def test_challenge_quotes_safely(self):
        value = challenge("r", error="invalid_token", description='bad "quote" \\ and \n newline')
        assert value == 'Bearer realm="r", error="invalid_token", error_description="bad quote  and  newline"'

    def test_headers_are_per_instance(self):
        a, b = Unauthorized("x"), Unauthorized("y", error=None)
        assert a.headers != b.headers
        assert FacadeError.headers == {} and Unauthorized.headers == {} and Forbidden.headers == {}
        assert Forbidden("no").headers == {}


# ------------------------------------------------------------------------------------------------ JWT


@pytest.fixture
def jwks_file(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(JWKS))
    return smart(jwks_url=None, jwks_file=str(path))


class TestJwt:
    def test_valid_rs256_token(self, jwks_file):
        tok = token()
        ctx = authenticate(jwks_file, f"Bearer {tok}")
        assert ctx.subject == "user-7" and ctx.client_id == "viewer-app" and ctx.patient == "123"
        assert ctx.token == tok and ctx.expires_at == NOW + 300
        assert ctx.scopes.allows("ImagingStudy", "search") and not ctx.scopes.allows("ImagingStudy", "create")
        assert ctx.scopes.other == ("launch/patient", "openid", "fhirUser")
        assert tok not in repr(ctx)

    def test_valid_es256_token(self, jwks_file):
        ctx = authenticate(jwks_file, f"Bearer {token(EC_KEY, 'ES256', 'ec1')}")
        assert ctx.patient == "123"

    @pytest.mark.parametrize("typ", ["JWT", "at+jwt", "application/at+jwt"])
    def test_access_token_types(self, jwks_file, typ):
        assert authenticate(jwks_file, f"Bearer {token(headers={'typ': typ})}").subject == "user-7"

    def test_scp_list_or_string_and_azp(self, jwks_file):
        ctx = authenticate(jwks_file, f"Bearer {token(scope=None, scp=['user/*.rs'], client_id=None, azp='a1')}")
        assert ctx.scopes.context("Patient", "read") == {"user"} and ctx.client_id == "a1"
        ctx = authenticate(jwks_file, f"Bearer {token(scope=None, scp='system/ImagingStudy.rs')}")
        assert ctx.scopes.context("ImagingStudy", "search") == {"system"}

    def test_odd_scope_types_grant_nothing(self, jwks_file):
        ctx = authenticate(jwks_file, f"Bearer {token(scope=42)}")
        assert ctx.scopes == Scopes()

    def test_the_user_it_names(self, jwks_file):
        # SMART fhirUser and the OpenID Connect names: who authors what the caller creates, not an authorization input
        claims = {
            "fhirUser": "https://ehr.example.org/fhir/Practitioner/p-7",
            "name": " Jane Roe ",
            "family_name": "Roe",
        }
        ctx = authenticate(jwks_file, f"Bearer {token(**claims)}")
        assert ctx.user == User("https://ehr.example.org/fhir/Practitioner/p-7", "Jane Roe", "Roe", None)
        assert "Roe" not in repr(ctx)
        assert ctx.cache_key == authenticate(jwks_file, f"Bearer {token()}").cache_key
        assert authenticate(jwks_file, f"Bearer {token()}").user == User()

    @pytest.mark.parametrize(
        ("value", "kept"),
        [
            ("Practitioner/7", True),
            ("PractitionerRole/a.b-c", True),
            ("http://ehr:8080/fhir/R4/Person/x", True),
            ("Patient/123", True),
            ("Organization/1", False),  # not a user type SMART allows
            ("Practitioner/7/_history/2", False),
            ("https://ehr.example.org/fhir/Practitioner/7 x", False),
            ("javascript:alert(1)//Practitioner/7", False),
            (["Practitioner/7"], False),
            ("Practitioner/" + "7" * 65, False),
        ],
    )
    def test_a_malformed_fhir_user_is_dropped(self, jwks_file, value, kept):
        ctx = authenticate(jwks_file, f"Bearer {token(fhirUser=value)}")
        assert ctx.user.fhir_user == (value if kept else None)

    def test_no_patient_claim(self, jwks_file):
        assert authenticate(jwks_file, f"Bearer {token(patient=None, scope='user/*.rs')}").patient is None

    def test_audience_list(self, jwks_file):
        assert authenticate(jwks_file, f"Bearer {token(aud=['https://other', AUD])}").subject == "user-7"

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"iss": "https://evil.example"}, "not issued by the trusted authorization server"),
            ({"iss": None}, "lacks the iss claim"),
            ({"aud": "https://other.example/fhir"}, "not meant for this server"),
            ({"aud": None}, "lacks the aud claim"),
            ({"exp": None}, "has no expiry"),
            ({"exp": "tomorrow"}, "exp is not a number"),
            ({"nbf": True}, "nbf is not a number"),
            ({"patient": "Patient/123"}, "patient context is not a FHIR id"),
            ({"patient": ""}, "patient context is not a FHIR id"),
            ({"patient": 123}, "patient context is not a FHIR id"),
        ],
    )
    def test_bad_claims(self, jwks_file, overrides, message):
        exc = rejected(jwks_file, f"Bearer {token(**overrides)}")
        assert message in exc.message and exc.error == "invalid_token"
        assert f'error_description="{exc.message}"' in exc.headers["WWW-Authenticate"]

    @pytest.mark.parametrize(
        ("offset", "ok"),
        [(-61, False), (-60, False), (-59, True), (0, True), (300, True)],
    )
    def test_expiry_with_skew(self, jwks_file, offset, ok):
        header = f"Bearer {token(exp=int(NOW) + offset)}"
        if ok:
            assert authenticate(jwks_file, header).subject == "user-7"
        else:
            assert "expired" in rejected(jwks_file, header).message

    @pytest.mark.parametrize(("claim", "message"), [("nbf", "not valid yet"), ("iat", "issued in the future")])
    def test_not_before_and_issued_at_with_skew(self, jwks_file, claim, message):
        assert authenticate(jwks_file, f"Bearer {token(**{claim: int(NOW) + 60})}").subject == "user-7"
        assert message in rejected(jwks_file, f"Bearer {token(**{claim: int(NOW) + 61})}").message

    def test_clock_is_injected(self, jwks_file):
        header = f"Bearer {token()}"
        assert authenticate(jwks_file, header, clock=Clock(NOW + 359)).subject == "user-7"
        assert "expired" in rejected(jwks_file, header, clock=Clock(NOW + 360)).message

    def test_unknown_kid(self, jwks_file):
        assert "unknown key" in rejected(jwks_file, f"Bearer {token(kid='rsa2')}").message

    def test_kid_of_the_other_algorithm(self, jwks_file):
        assert "unknown key" in rejected(jwks_file, f"Bearer {token(kid='ec1')}").message

    def test_no_kid_tries_each_key_of_the_algorithm(self, tmp_path):
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps({"keys": [jwk(OTHER_RSA_KEY, "a"), jwk(RSA_KEY, "b"), jwk(EC_KEY, None)]}))
        settings = smart(jwks_url=None, jwks_file=str(path))
        assert authenticate(settings, f"Bearer {token(kid=None)}").subject == "user-7"
        assert authenticate(settings, f"Bearer {token(EC_KEY, 'ES256', kid=None)}").subject == "user-7"

    def test_wrong_signature(self, jwks_file):
        exc = rejected(jwks_file, f"Bearer {token(OTHER_RSA_KEY)}")
        assert exc.message == "the access token's signature is not valid"

    def test_tampered_payload(self, jwks_file):
        head, _, sig = token().split(".")
        forged = b64(json.dumps(claims(patient="456")).encode())
        assert "signature" in rejected(jwks_file, f"Bearer {head}.{forged}.{sig}").message

    def test_es256_signature_under_an_rs256_header(self, jwks_file):
        _, payload, sig = token(EC_KEY, "ES256", "ec1").split(".")
        swapped = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "rsa1"}).encode())
        rejected(jwks_file, f"Bearer {swapped}.{payload}.{sig}")

    @pytest.mark.parametrize("alg", ["none", "None", "NONE"])
    def test_alg_none(self, jwks_file, alg):
        tok = unsigned({"alg": alg, "typ": "JWT", "kid": "rsa1"}, claims())
        assert "algorithm is not accepted" in rejected(jwks_file, f"Bearer {tok}").message

    @pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
    def test_hmac_with_the_public_key_as_secret(self, jwks_file, alg):
        """Algorithm confusion (RFC 8725 §2.1): an HMAC keyed with the published RSA key must not verify."""
        pem = RSA_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        head = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "rsa1"}).encode())
        body = b64(json.dumps(claims(patient="456", scope="system/*.*")).encode())
        for secret in (pem, json.dumps(JWKS["keys"][0]).encode()):
            sig = hmac.new(secret, f"{head}.{body}".encode(), digest).digest()
            assert "algorithm is not accepted" in rejected(jwks_file, f"Bearer {head}.{body}.{b64(sig)}").message

    @pytest.mark.parametrize("alg", ["RS512", "PS256"])
    def test_other_asymmetric_algorithms(self, jwks_file, alg):
        assert "algorithm is not accepted" in rejected(jwks_file, f"Bearer {token(alg=alg)}").message

    @pytest.mark.parametrize("typ", ["dpop+jwt", "logout+jwt", "secevent+jwt"])
    def test_other_token_types(self, jwks_file, typ):
        assert "not an access token" in rejected(jwks_file, f"Bearer {token(headers={'typ': typ})}").message

    def test_keys_never_come_from_the_token(self, jwks_file):
        """A jwk/jku header naming the attacker's key is ignored: the kid still has to be in our set."""
        attacker = jwk(OTHER_RSA_KEY, "evil")
        tok = token(OTHER_RSA_KEY, kid="evil", headers={"jwk": attacker, "jku": "https://evil.example/jwks"})
        assert "unknown key" in rejected(jwks_file, f"Bearer {tok}").message

    @pytest.mark.parametrize("tok", ["a.b.c", "e30.e30.", "!!!.???.***"])
    def test_garbage_jws(self, jwks_file, tok):
        rejected(jwks_file, f"Bearer {tok}")

    def test_opaque_token_without_introspection(self, jwks_file):
        assert rejected(jwks_file, "Bearer opaque-token-123").message == "the access token is not a signed JWT"


class TestJwks:
    def test_parse_skips_unusable_keys(self):
        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        p384 = ec.generate_private_key(ec.SECP384R1())
        private = RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True)
        keys = parse_jwks(
            {
                "keys": [
                    jwk(RSA_KEY, "ok-rsa"),
                    jwk(EC_KEY, "ok-ec", alg="ES256"),
                    jwk(small, "too-small"),
                    jwk(p384, "p384"),
                    jwk(RSA_KEY, "enc", use="enc"),
                    jwk(RSA_KEY, "ps", alg="PS256"),
                    jwk(RSA_KEY, "ops", key_ops=["encrypt"]),
                    {**private, "kid": "private"},
                    {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
                    {"kty": "RSA", "kid": "broken", "n": "AQAB"},
                    "not a key",
                ]
            }
        )
        assert [(k.kid, k.alg) for k in keys] == [("ok-rsa", "RS256"), ("ok-ec", "ES256")]

    @pytest.mark.parametrize("doc", [None, [], {}, {"keys": {}}, "keys"])
    def test_parse_rejects_non_sets(self, doc):
        with pytest.raises(ValueError):
            parse_jwks(doc)

    def test_url_fetched_once_and_cached_for_ttl(self):
        server, clock = Server(), Clock()

        async def go():
            async with authorizer(smart(jwks_cache_ttl=300), server, clock) as a:
                for _ in range(5):
                    await a.authenticate(f"Bearer {token()}")
                await a.authenticate(f"Bearer {token(EC_KEY, 'ES256', 'ec1')}")
                assert server.count(JWKS_URL) == 1 and a.jwks_loads == 1
                clock.now += 299
                await a.authenticate(f"Bearer {token(exp=int(clock.now) + 60)}")
                assert server.count(JWKS_URL) == 1
                clock.now += 2
                await a.authenticate(f"Bearer {token(exp=int(clock.now) + 60)}")
                assert server.count(JWKS_URL) == 2

        run(go())

    def test_jwks_request_carries_no_client_credentials(self):
        server = Server()

        async def go():
            async with authorizer(smart(), server, auth=("pacs-user", "pacs-password")) as a:
                await a.authenticate(f"Bearer {token()}")

        run(go())
        (request,) = server.requests
        assert request.method == "GET" and "authorization" not in request.headers
        assert request.headers["accept"] == "application/json"

    def test_unknown_kid_refetches_once_rate_limited(self):
        server, clock = Server(), Clock()
        new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

        async def go():
            async with authorizer(smart(), server, clock) as a:
                await a.authenticate(f"Bearer {token()}")
                assert server.count(JWKS_URL) == 1
                # just loaded: an unknown kid does not trigger a refetch yet
                with pytest.raises(Unauthorized):
                    await a.authenticate(f"Bearer {token(new_key, kid='rsa2')}")
                assert server.count(JWKS_URL) == 1
                # the server rotates its keys; after the rate limit, the unknown kid causes one refetch
                server.jwks = {"keys": [*JWKS["keys"], jwk(new_key, "rsa2")]}
                clock.now += 11
                ctx = await a.authenticate(f"Bearer {token(new_key, kid='rsa2', exp=int(clock.now) + 60)}")
                assert ctx.subject == "user-7" and server.count(JWKS_URL) == 2
                # forged kids do not hammer the key server
                for i in range(20):
                    with pytest.raises(Unauthorized):
                        await a.authenticate(f"Bearer {token(kid=f'forged-{i}', exp=int(clock.now) + 60)}")
                assert server.count(JWKS_URL) == 2
                clock.now += 11
                with pytest.raises(Unauthorized):
                    await a.authenticate(f"Bearer {token(kid='forged-x', exp=int(clock.now) + 60)}")
                assert server.count(JWKS_URL) == 3

        run(go())

    def test_token_without_kid_never_refetches(self):
        server, clock = Server({"keys": [jwk(OTHER_RSA_KEY, None)]}), Clock()

        async def go():
            async with authorizer(smart(), server, clock) as a:
                for _ in range(3):
                    clock.now += 20
                    with pytest.raises(Unauthorized):
                        await a.authenticate(f"Bearer {token(kid=None, exp=int(clock.now) + 60)}")
                assert server.count(JWKS_URL) == 1

        run(go())

    def test_concurrent_first_requests_load_once(self):
        server = Server()
        server.delay = 0.02

        async def go():
            async with authorizer(smart(), server) as a:
                await asyncio.gather(*(a.authenticate(f"Bearer {token()}") for _ in range(10)))
                assert server.count(JWKS_URL) == 1

        run(go())

    @pytest.mark.parametrize(
        ("fail", "error", "status"),
        [
            (httpx.ConnectError("refused"), UpstreamUnavailable, 503),
            (httpx.ReadTimeout("slow"), UpstreamTimeout, 504),
            (500, UpstreamUnavailable, 503),
            (404, UpstreamUnavailable, 503),
            (b"<html>", UpstreamBadResponse, 502),
            (b'{"no": "keys"}', UpstreamBadResponse, 502),
        ],
    )
    def test_key_server_failures(self, fail, error, status):
        server = Server()
        server.fail = fail
        with pytest.raises(error) as info:
            authenticate(smart(), f"Bearer {token()}", server)
        assert info.value.status == status
        secret_free(info.value, f"Bearer {token()}")

    def test_failures_are_not_cached(self):
        server = Server()

        async def go():
            async with authorizer(smart(), server) as a:
                server.fail = 503
                with pytest.raises(UpstreamUnavailable):
                    await a.authenticate(f"Bearer {token()}")
                server.fail = None
                assert (await a.authenticate(f"Bearer {token()}")).subject == "user-7"
                assert server.count(JWKS_URL) == 2

        run(go())

    def test_missing_file(self, tmp_path):
        settings = smart(jwks_url=None, jwks_file=str(tmp_path / "missing.json"))
        with pytest.raises(UpstreamUnavailable) as info:
            authenticate(settings, f"Bearer {token()}")
        assert "missing.json" not in info.value.message

    def test_file_reloaded_after_ttl(self, tmp_path):
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps({"keys": [jwk(OTHER_RSA_KEY, "old")]}))
        clock = Clock()

        async def go():
            async with authorizer(smart(jwks_url=None, jwks_file=str(path)), clock=clock) as a:
                with pytest.raises(Unauthorized):
                    await a.authenticate(f"Bearer {token()}")
                path.write_text(json.dumps(JWKS))
                clock.now += 301
                assert (await a.authenticate(f"Bearer {token(exp=int(clock.now) + 60)}")).subject == "user-7"
                assert a.jwks_loads == 2

        run(go())


# ------------------------------------------------------------------------------------------------ introspection

ACTIVE = {
    "active": True,
    "scope": "patient/ImagingStudy.read openid fhirUser",
    "client_id": "viewer-app",
    "sub": "user-9",
    "patient": "456",
    "exp": int(NOW) + 100,
    "iss": "https://id.example.org",  # SMART: the ID token's issuer; not compared
}


def introspecting(**kw) -> AuthSettings:
    return AuthSettings(**{**INTROSPECTION, **kw})


class TestIntrospection:
    def test_the_user_of_an_introspection_answer(self):
        # SMART App Launch, Token Introspection: the answer carries fhirUser when the token was issued with it
        server = Server(answers={"opaque-1": ACTIVE | {"fhirUser": "Practitioner/9", "given_name": "Ann"}})
        ctx = authenticate(introspecting(), "Bearer opaque-1", server)
        assert ctx.user == User(fhir_user="Practitioner/9", given_name="Ann")

    def test_active_token(self):
        server = Server(answers={"opaque-1": ACTIVE})
        ctx = authenticate(introspecting(), "Bearer opaque-1", server)
        assert (ctx.subject, ctx.client_id, ctx.patient, ctx.expires_at) == ("user-9", "viewer-app", "456", NOW + 100)
        assert ctx.scopes.context("ImagingStudy", "search") == {"patient"} and ctx.token == "opaque-1"
        (request,) = server.requests
        assert request.method == "POST" and request.url == INTROSPECT_URL
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        assert parse_qs(request.content.decode()) == {"token": ["opaque-1"], "token_type_hint": ["access_token"]}
        expected = base64.b64encode(f"imaging-facade:{SECRET}".encode()).decode()
        assert request.headers["authorization"] == f"Basic {expected}"

    def test_without_client_credentials_sends_none(self):
        server = Server(answers={"opaque-1": ACTIVE})
        settings = introspecting(introspection_client_id=None, introspection_client_secret=None)

        async def go():
            async with authorizer(settings, server, auth=("pacs-user", "pacs-password")) as a:
                await a.authenticate("Bearer opaque-1")

        run(go())
        assert "authorization" not in server.requests[0].headers

    def test_inactive(self):
        exc = rejected(introspecting(), "Bearer revoked-token", Server())
        assert exc.message == "the access token is not active" and exc.error == "invalid_token"

    def test_cached_until_exp(self):
        server, clock = Server(answers={"opaque-1": ACTIVE}), Clock()

        async def go():
            async with authorizer(introspecting(), server, clock) as a:
                for _ in range(5):
                    await a.authenticate("Bearer opaque-1")
                assert server.count(INTROSPECT_URL) == 1 and a.introspections == 1
                clock.now = NOW + 99
                await a.authenticate("Bearer opaque-1")
                assert server.count(INTROSPECT_URL) == 1
                # at exp the cached answer is gone; the server now says the token is inactive
                clock.now = NOW + 100
                server.answers = {}
                with pytest.raises(Unauthorized):
                    await a.authenticate("Bearer opaque-1")
                assert server.count(INTROSPECT_URL) == 2

        run(go())

    def test_cache_bounded_by_ttl(self):
        long_lived = {**ACTIVE, "exp": int(NOW) + 86400}
        server, clock = Server(answers={"t": long_lived}), Clock()

        async def go():
            async with authorizer(introspecting(introspection_cache_ttl=300), server, clock) as a:
                await a.authenticate("Bearer t")
                clock.now += 299
                await a.authenticate("Bearer t")
                assert server.count(INTROSPECT_URL) == 1
                clock.now += 2
                await a.authenticate("Bearer t")
                assert server.count(INTROSPECT_URL) == 2

        run(go())

    def test_no_cache_when_ttl_zero(self):
        server = Server(answers={"t": ACTIVE})

        async def go():
            async with authorizer(introspecting(introspection_cache_ttl=0), server) as a:
                await a.authenticate("Bearer t")
                await a.authenticate("Bearer t")
                with pytest.raises(Unauthorized):
                    await a.authenticate("Bearer other")
                with pytest.raises(Unauthorized):
                    await a.authenticate("Bearer other")
            assert server.count(INTROSPECT_URL) == 4

        run(go())

    def test_inactive_cached_briefly(self):
        server, clock = Server(), Clock()

        async def go():
            async with authorizer(introspecting(), server, clock) as a:
                for _ in range(3):
                    with pytest.raises(Unauthorized):
                        await a.authenticate("Bearer dead")
                assert server.count(INTROSPECT_URL) == 1
                clock.now += 11
                with pytest.raises(Unauthorized):
                    await a.authenticate("Bearer dead")
                assert server.count(INTROSPECT_URL) == 2

        run(go())

    def test_each_token_is_introspected(self):
        server = Server(answers={"a": ACTIVE, "b": {**ACTIVE, "patient": "789"}})

        async def go():
            async with authorizer(introspecting(), server) as a:
                assert (await a.authenticate("Bearer a")).patient == "456"
                assert (await a.authenticate("Bearer b")).patient == "789"
                assert (await a.authenticate("Bearer a")).patient == "456"
            assert server.count(INTROSPECT_URL) == 2

        run(go())

    def test_concurrent_misses_make_one_request(self):
        server = Server(answers={"t": ACTIVE})
        server.delay = 0.02

        async def go():
            async with authorizer(introspecting(), server) as a:
                results = await asyncio.gather(*(a.authenticate("Bearer t") for _ in range(10)))
            assert {r.patient for r in results} == {"456"}
            assert server.count(INTROSPECT_URL) == 1

        run(go())

    @pytest.mark.parametrize(
        ("answer", "message"),
        [
            ({**ACTIVE, "exp": int(NOW) - 61}, "expired"),
            ({**ACTIVE, "nbf": int(NOW) + 3600}, "not valid yet"),
            ({**ACTIVE, "aud": "https://other.example"}, "not meant for this server"),
            ({**ACTIVE, "aud": ["https://other.example"]}, "not meant for this server"),
            ({**ACTIVE, "patient": "../Patient/1"}, "patient context is not a FHIR id"),
            ({**ACTIVE, "exp": "soon"}, "exp is not a number"),
            ({**ACTIVE, "active": False}, "not active"),
        ],
    )
    def test_rejected_answers(self, answer, message):
        assert message in rejected(introspecting(), "Bearer t", Server(answers={"t": answer})).message

    def test_audience_accepted_in_list_and_exp_optional(self):
        answer = {k: v for k, v in ACTIVE.items() if k != "exp"} | {"aud": [AUD, "x"]}
        ctx = authenticate(introspecting(), "Bearer t", Server(answers={"t": answer}))
        assert ctx.patient == "456" and ctx.expires_at is None

    @pytest.mark.parametrize(
        ("fail", "error", "status"),
        [
            (httpx.ConnectError("refused"), UpstreamUnavailable, 503),
            (httpx.ConnectTimeout("slow"), UpstreamTimeout, 504),
            (500, UpstreamUnavailable, 503),
            (401, UpstreamUnavailable, 503),
            (b"not json", UpstreamBadResponse, 502),
            (b'{"scope": "x"}', UpstreamBadResponse, 502),
            (b'{"active": "true"}', UpstreamBadResponse, 502),
            (b"[true]", UpstreamBadResponse, 502),
        ],
    )
    def test_endpoint_failures(self, fail, error, status):
        server = Server()
        server.fail = fail
        with pytest.raises(error) as info:
            authenticate(introspecting(), "Bearer opaque-secret-token", server)
        assert info.value.status == status
        secret_free(info.value, "Bearer opaque-secret-token")

    def test_failures_are_not_cached(self):
        server = Server(answers={"t": ACTIVE})

        async def go():
            async with authorizer(introspecting(), server) as a:
                server.fail = 502
                with pytest.raises(UpstreamUnavailable):
                    await a.authenticate("Bearer t")
                server.fail = None
                assert (await a.authenticate("Bearer t")).patient == "456"
            assert server.count(INTROSPECT_URL) == 2

        run(go())

    def test_both_ways_configured(self):
        """A JWS-shaped token is checked locally; an opaque one is introspected."""
        server = Server(answers={"opaque": ACTIVE})

        async def go():
            async with authorizer(introspecting(jwks_url=JWKS_URL, token_issuer=ISS), server) as a:
                assert (await a.authenticate(f"Bearer {token()}")).patient == "123"
                assert (await a.authenticate("Bearer opaque")).patient == "456"
            assert server.count(JWKS_URL) == 1 and server.count(INTROSPECT_URL) == 1

        run(go())


# ------------------------------------------------------------------------------------------------ open mode


class TestOpenMode:
    @pytest.mark.parametrize("header", [None, "", "Bearer whatever", "Basic x"])
    def test_everyone_is_let_in(self, header):
        assert authenticate(AuthSettings(), header) is OPEN

    def test_open_context_allows_everything_unconfined(self):
        assert OPEN.patient is None and OPEN.token is None
        for interaction in ("read", "search", "create"):
            assert OPEN.require("ImagingStudy", interaction) is None
            assert OPEN.require("Patient", interaction) is None


# ------------------------------------------------------------------------------------------------ context


def ctx(scope: str, patient: str | None = None, subject: str | None = "u", client: str | None = "c") -> AuthContext:
    return AuthContext(subject=subject, client_id=client, scopes=Scopes.parse(scope), patient=patient)


class TestRequire:
    def test_patient_scope_confines_to_the_token_patient(self):
        assert ctx("patient/ImagingStudy.rs", "123").require("ImagingStudy", "search") == "123"
        assert ctx("patient/*.read", "123").require("ImagingStudy", "read") == "123"

    def test_user_and_system_scopes_are_unconfined(self):
        assert ctx("user/ImagingStudy.rs", "123").require("ImagingStudy", "search") is None
        assert ctx("system/*.rs").require("ImagingStudy", "read") is None
        assert ctx("patient/ImagingStudy.rs user/ImagingStudy.s", "123").require("ImagingStudy", "search") is None
        # grants are not combined: user read does not lift the patient confinement on search
        assert ctx("patient/ImagingStudy.rs user/ImagingStudy.r", "123").require("ImagingStudy", "search") == "123"

    def test_patient_scope_without_patient_context(self):
        with pytest.raises(Forbidden) as info:
            ctx("patient/ImagingStudy.rs").require("ImagingStudy", "search")
        assert info.value.status == 403 and info.value.code == "forbidden"
        assert "patient context" in info.value.message

    def test_insufficient_scope(self):
        with pytest.raises(Forbidden) as info:
            ctx("patient/ImagingStudy.rs openid", "123").require("ImagingSelection", "create")
        assert info.value.headers == {
            "WWW-Authenticate": 'Bearer realm="imaging-fhir-facade", error="insufficient_scope", '
            'error_description="the access token does not allow create on ImagingSelection", '
            'scope="patient/ImagingSelection.c user/ImagingSelection.c system/ImagingSelection.c"'
        }

    def test_restricted_scope_is_refused_with_reason(self):
        with pytest.raises(Forbidden) as info:
            ctx("patient/ImagingStudy.rs?modality=CT", "123").require("ImagingStudy", "search")
        assert "search restrictions" in info.value.message

    def test_levels_can_be_refused(self):
        with pytest.raises(Forbidden) as info:
            ctx("system/ImagingStudy.rs").require("ImagingStudy", "search", levels=("patient", "user"))
        assert 'scope="patient/ImagingStudy.s user/ImagingStudy.s"' in info.value.headers["WWW-Authenticate"]


class TestConfine:
    def test_unconfined(self):
        assert confine_patients(None, ["1", "2"]) == ("1", "2")
        assert confine_patients(None, []) == ()

    def test_implicit_filter(self):
        assert confine_patients("123", []) == ("123",)

    def test_same_patient(self):
        assert confine_patients("123", ["123", "123"]) == ("123",)

    @pytest.mark.parametrize("requested", [["456"], ["123", "456"], ["Patient/123"]])
    def test_other_patient_is_forbidden(self, requested):
        with pytest.raises(Forbidden) as info:
            confine_patients("123", requested)
        assert info.value.status == 403 and "456" not in info.value.message


class TestIsolationKey:
    def test_equivalent_tokens_share(self):
        a = ctx("patient/ImagingStudy.read openid launch/patient", "123", subject="alice", client="app1")
        b = ctx("fhirUser patient/ImagingStudy.s patient/ImagingStudy.r", "123", subject="bob", client="app2")
        assert a.cache_key == b.cache_key
        assert a.private_cache_key != b.private_cache_key

    def test_user_tokens_without_patient_share_by_scope_set(self):
        assert ctx("user/*.rs", subject="a").cache_key == ctx("user/*.read", subject="b").cache_key

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            (("patient/ImagingStudy.rs", "123"), ("patient/ImagingStudy.rs", "456")),
            (("patient/ImagingStudy.rs", "123"), ("patient/ImagingStudy.rs", None)),
            (("patient/ImagingStudy.rs", None), ("user/ImagingStudy.rs", None)),
            (("user/ImagingStudy.rs", None), ("system/ImagingStudy.rs", None)),
            (("user/ImagingStudy.rs", None), ("user/ImagingStudy.rs user/Patient.r", None)),
            (("user/ImagingStudy.rs", None), ("user/ImagingStudy.r", None)),
            (("user/*.rs", None), ("user/ImagingStudy.rs", None)),
        ],
    )
    def test_different_authorization_never_shares(self, a, b):
        assert ctx(*a).cache_key != ctx(*b).cache_key

    def test_restricted_scopes_add_nothing(self):
        assert ctx("user/*.rs user/Observation.rs?category=lab").cache_key == ctx("user/*.rs").cache_key

    def test_key_is_a_digest(self):
        key = ctx("patient/ImagingStudy.rs", "patient-id-123").cache_key
        assert re.fullmatch(r"[0-9a-f]{64}", key) and "123" not in key
        assert key == ctx("patient/ImagingStudy.rs", "patient-id-123").cache_key
        assert OPEN.cache_key == AuthContext(None, None, OPEN.scopes).cache_key

    def test_token_does_not_change_the_key(self):
        a = AuthContext("u", "c", Scopes.parse("user/*.rs"), token="t1", expires_at=1.0)
        b = AuthContext("u", "c", Scopes.parse("user/*.rs"), token="t2", expires_at=2.0)
        assert a.cache_key == b.cache_key and a.private_cache_key == b.private_cache_key


# ------------------------------------------------------------------------------------------------ discovery


class TestDiscovery:
    def test_smart_configuration(self):
        doc = smart_configuration(
            authorization_endpoint="https://auth.example.org/authorize",
            token_endpoint="https://auth.example.org/token",
            introspection_endpoint=INTROSPECT_URL,
            jwks_uri=JWKS_URL,
            issuer=ISS,
        )
        assert doc["authorization_endpoint"] == "https://auth.example.org/authorize"
        assert doc["token_endpoint"] == "https://auth.example.org/token"
        assert doc["introspection_endpoint"] == INTROSPECT_URL and doc["jwks_uri"] == JWKS_URL
        assert doc["grant_types_supported"] == ["authorization_code"]
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert doc["response_types_supported"] == ["code"]
        assert {"permission-v1", "permission-v2", "permission-patient", "smart-imaging-access"} <= set(
            doc["capabilities"]
        )
        assert "patient/ImagingStudy.rs" in doc["scopes_supported"]
        assert "issuer" not in doc  # SMART: only with sso-openid-connect, "otherwise, omitted"
        json.dumps(doc)

    def test_issuer_with_openid_connect(self):
        doc = smart_configuration(
            authorization_endpoint="https://a/authorize",
            token_endpoint="https://a/token",
            issuer=ISS,
            jwks_uri=JWKS_URL,
            capabilities=["launch-standalone", "sso-openid-connect", "launch-standalone"],
            grant_types_supported=["authorization_code", "client_credentials"],
            token_endpoint_auth_methods_supported=["private_key_jwt"],
        )
        assert doc["issuer"] == ISS and doc["capabilities"] == ["launch-standalone", "sso-openid-connect"]
        assert doc["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]

    @pytest.mark.parametrize(
        "kw",
        [
            {"capabilities": ["sso-openid-connect"], "authorization_endpoint": None},
            {"capabilities": ["launch-ehr"], "authorization_endpoint": None},
            {"grant_types_supported": []},
        ],
    )
    def test_inconsistent_configuration(self, kw):
        with pytest.raises(ValueError):
            smart_configuration(**{"authorization_endpoint": "https://a/authz", "token_endpoint": "https://a/t", **kw})

    def test_capability_security(self):
        security = capability_security(
            token_endpoint="https://auth.example.org/token",
            authorization_endpoint="https://auth.example.org/authorize",
            introspection_endpoint=INTROSPECT_URL,
            cors=True,
        )
        (ext,) = security["extension"]
        assert ext["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
        assert ext["extension"] == [
            {"url": "token", "valueUri": "https://auth.example.org/token"},
            {"url": "authorize", "valueUri": "https://auth.example.org/authorize"},
            {"url": "introspect", "valueUri": INTROSPECT_URL},
        ]
        (service,) = security["service"]
        assert service["coding"] == [
            {
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
                "display": "SMART-on-FHIR",
            }
        ]
        assert security["cors"] is True
        CapabilityStatementRestSecurity.model_validate(security)
        CapabilityStatementRestSecurity.model_validate(capability_security(token_endpoint="https://a/t"))
