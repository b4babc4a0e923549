"""What the change-feed tests share (issue 22): a facade following a test Orthanc, and waiting for a condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from app.main import create_app
from app.settings import Settings
from tests.support.fhir_check import checking_client
from tests.support.orthanc import OrthancServer


def following_client(orthanc: OrthancServer, **overrides: Any):
    """A checked TestClient of a facade with pacs_kind = orthanc, cache_ttl 3600 and a 1 s poll (``overrides``)."""
    settings = Settings(
        **{
            "dicomweb_url": orthanc.dicomweb_url,
            "auth_mode": "open",
            "cache_ttl": 3600.0,
            "pacs_kind": "orthanc",
            "change_poll_interval": 1.0,
        }
        | overrides
    )
    return checking_client(create_app(settings))


def until(check: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``check()`` held; fails after ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail(f"not within {seconds} s")
