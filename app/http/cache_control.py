"""The request's cache directives, and how stale an answer it takes when the PACS fails.

Caches never overrule the client. Of the request directives (RFC 9111 §5.2.1) the facade acts on:

* ``no-cache`` (§5.2.1.4), and ``max-age=0`` (§5.2.1.1: no stored answer is young enough), and, without a
  Cache-Control header, ``Pragma: no-cache`` (§5.4): the answer must be one the PACS just gave. Nothing kept is
  looked up, and if the PACS fails the client gets the error, not a stale answer.
* ``stale-if-error=<seconds>`` (RFC 5861 §4): the client takes an answer up to that many seconds past its freshness
  when the PACS fails, also together with ``no-cache``; never more than the facade keeps (``cache_stale_ttl``).

A request that says neither takes what the operator configured: stale-if-error up to ``cache_stale_ttl``.
Other directives (``max-stale``, ``min-fresh``, ``max-age`` above 0, ``no-store``, ``only-if-cached``) change nothing:
answers are fresh for at most ``cache_ttl`` anyway, and nothing a client sends is stored as its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CacheDirectives", "parse_cache_control", "stale_accepted"]

# RFC 9110 §5.6.2 token, then an optional "=" with a token or a quoted string (which may hold commas).
_DIRECTIVE = re.compile(r"""([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?""")


@dataclass(frozen=True, slots=True)
class CacheDirectives:
    no_cache: bool = False
    stale_if_error: int | None = None  # seconds; None: not said


NONE_SAID = CacheDirectives()


def parse_cache_control(cache_control: str | None, pragma: str | None = None) -> CacheDirectives:
    """The directives of a request's ``Cache-Control`` (and ``Pragma``) header values. Names are case-insensitive
    (RFC 9111 §5.2); a malformed delta-seconds is ignored, as if the directive were absent (§1.2.2)."""
    if not cache_control:
        # §5.4: Pragma counts only where the request has no Cache-Control header
        if pragma and any(p.strip().lower() == "no-cache" for p in pragma.split(",")):
            return CacheDirectives(no_cache=True)
        return NONE_SAID
    no_cache, stale_if_error = False, None
    for match in _DIRECTIVE.finditer(cache_control):
        name, value = match.group(1).lower(), (match.group(2) or "").strip('"')
        if name == "no-cache":
            no_cache = True
        elif name == "max-age" and value.isascii() and value.isdigit() and int(value) == 0:
            no_cache = True
        elif name == "stale-if-error" and value.isascii() and value.isdigit():
            stale_if_error = int(value)
    return CacheDirectives(no_cache=no_cache, stale_if_error=stale_if_error)


def stale_accepted(directives: CacheDirectives, kept_for: float) -> float:
    """Seconds past freshness a kept answer may be when the PACS fails (0: none), for a facade that keeps answers
    ``kept_for`` seconds past their freshness (``cache_stale_ttl``)."""
    if directives.stale_if_error is not None:
        return float(min(directives.stale_if_error, kept_for))
    return 0.0 if directives.no_cache else float(kept_for)
