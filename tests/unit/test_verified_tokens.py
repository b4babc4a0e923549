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
