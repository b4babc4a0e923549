"""What one request carries down to the PACS calls, as context variables (asyncio tasks copy them).

Set by app.endpoints after authorization, read where the PACS is called: which cache partition the request may
share (app.auth isolation key) and, with ``pacs_auth = "forward"``, the caller's own token for the PACS.
"""

from __future__ import annotations

import contextvars
from collections.abc import Hashable

CACHE_SCOPE: contextvars.ContextVar[Hashable] = contextvars.ContextVar("cache_scope", default=None)
PACS_TOKEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("pacs_token", default=None)
# Set to a fresh list per request; a PACS call answered from a stale cache entry (stale-if-error) appends to it.
STALE_ANSWERS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("stale_answers", default=None)
