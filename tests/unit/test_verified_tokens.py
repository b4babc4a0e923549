"""Verified JWTs are kept by their SHA-256 until exp (issue 14): one signature check per token, not per request."""

from __future__ import annotations

import asyncio
import json

import pytest

import app.security.auth as auth_module
from app.security.context import Unauthorized
from tests.unit.test_auth import JWKS, NOW, Clock, authorizer, smart, token


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = auth_module.verify_jwt

    def verify(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(auth_module, "verify_jwt", verify)
    return calls


def _twice(settings, headers, clock, between=0.0):
    async def go():
        async with authorizer(settings, clock=clock) as a:
            first = await a.authenticate(headers[0])
            clock.now += between
            try:
                second = await a.authenticate(headers[1])
            except Unauthorized as exc:
                second = exc
            return first, second

    return asyncio.run(go())


def test_a_repeat_token_is_not_verified_again(tmp_path, counted):
    settings = smart(jwks_url=None, jwks_file=str(_jwks(tmp_path)))
    tok = f"Bearer {token()}"
    first, second = _twice(settings, [tok, tok], Clock())
    assert second is first and len(counted) == 1


def test_another_token_is_verified(tmp_path, counted):
    settings = smart(jwks_url=None, jwks_file=str(_jwks(tmp_path)))
    _, second = _twice(settings, [f"Bearer {token()}", f"Bearer {token(sub='user-8')}"], Clock())
    assert second.subject == "user-8" and len(counted) == 2


def test_a_kept_token_still_expires(tmp_path, counted):
    settings = smart(jwks_url=None, jwks_file=str(_jwks(tmp_path)), clock_skew=0)
    tok = f"Bearer {token()}"  # exp = NOW + 300
    _, second = _twice(settings, [tok, tok], Clock(NOW), between=301)
    assert isinstance(second, Unauthorized)


def test_a_bad_token_is_never_kept(tmp_path, counted):
    settings = smart(jwks_url=None, jwks_file=str(_jwks(tmp_path)), clock_skew=0)
    expired = f"Bearer {token(exp=NOW - 10)}"

    async def go():
        async with authorizer(settings, clock=Clock()) as a:
            for _ in range(2):
                with pytest.raises(Unauthorized):
                    await a.authenticate(expired)

    asyncio.run(go())
    assert len(counted) == 2


def _jwks(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(JWKS))
    return path


def test_known_vouches_only_for_what_authenticate_established(tmp_path):
    """Authorizer.known (the warm path, app.http.warm): no I/O, no signature check, never a context that
    authenticate would not return now."""
    from app.security.context import OPEN
    from tests.unit.test_auth import ACTIVE, INTROSPECT_URL, Server, introspecting

    clock = Clock()
    settings = smart(jwks_url=None, jwks_file=str(_jwks(tmp_path)), clock_skew=0)
    tok = f"Bearer {token(exp=int(NOW) + 60)}"

    async def go():
        async with authorizer(settings, clock=clock) as a:
            assert a.known(tok) is None  # never verified
            ctx = await a.authenticate(tok)
            assert a.known(tok) is ctx
            assert a.known(None) is None and a.known("Bearer x") is None and a.known("Basic abc") is None
            clock.now += 61  # past exp
            assert a.known(tok) is None
        server = Server(answers={"opaque": ACTIVE})
        async with authorizer(introspecting(), server) as a:
            assert a.known("Bearer opaque") is None
            ctx = await a.authenticate("Bearer opaque")
            assert a.known("Bearer opaque") is ctx
            assert a.known("Bearer dead") is None
            with pytest.raises(Unauthorized):
                await a.authenticate("Bearer dead")
            assert a.known("Bearer dead") is None  # a kept refusal is not a context
            assert server.count(INTROSPECT_URL) == 2
        async with authorizer(smart(mode="open")) as a:
            assert a.known(None) is OPEN

    asyncio.run(go())
