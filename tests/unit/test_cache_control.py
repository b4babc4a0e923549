"""Cache-Control request directives (RFC 9111 §5.2.1, RFC 5861 §4) and the stale-if-error they accept."""

from __future__ import annotations

import pytest

from app.http.cache_control import CacheDirectives, parse_cache_control, stale_accepted


@pytest.mark.parametrize(
    ("cache_control", "pragma", "want"),
    [
        (None, None, CacheDirectives()),
        ("", None, CacheDirectives()),
        ("no-cache", None, CacheDirectives(no_cache=True)),
        ("No-Cache", None, CacheDirectives(no_cache=True)),
        ('no-cache="set-cookie, x-a"', None, CacheDirectives(no_cache=True)),
        ("max-age=0", None, CacheDirectives(no_cache=True)),
        ("max-age=60", None, CacheDirectives()),
        ("max-age=0x1", None, CacheDirectives()),  # not delta-seconds: ignored
        ("no-store", None, CacheDirectives()),
        ("stale-if-error=30", None, CacheDirectives(stale_if_error=30)),
        ("no-cache, stale-if-error=600", None, CacheDirectives(no_cache=True, stale_if_error=600)),
        ('stale-if-error="45",no-cache', None, CacheDirectives(no_cache=True, stale_if_error=45)),
        ("stale-if-error=-1", None, CacheDirectives()),
        ("stale-if-error=\uff11\uff12", None, CacheDirectives()),  # full-width digits are not delta-seconds
        ("stale-if-error", None, CacheDirectives()),
        (None, "no-cache", CacheDirectives(no_cache=True)),
        ("", "foo, no-cache", CacheDirectives(no_cache=True)),
        ("max-age=60", "no-cache", CacheDirectives()),  # §5.4: Pragma only without Cache-Control
        ('x-a="no-cache"', None, CacheDirectives()),  # a quoted value is no directive
    ],
)
def test_directives(cache_control, pragma, want):
    assert parse_cache_control(cache_control, pragma) == want


@pytest.mark.parametrize(
    ("directives", "want"),
    [
        (CacheDirectives(), 300.0),  # nothing said: what the operator configured
        (CacheDirectives(no_cache=True), 0.0),  # an answer the PACS just gave, or the error
        (CacheDirectives(no_cache=True, stale_if_error=60), 60.0),  # asked for explicitly
        (CacheDirectives(stale_if_error=0), 0.0),
        (CacheDirectives(stale_if_error=86400), 300.0),  # never more than is kept
    ],
)
def test_stale_accepted(directives, want):
    assert stale_accepted(directives, 300) == want
