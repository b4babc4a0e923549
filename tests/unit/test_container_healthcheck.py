"""The facade image's HEALTHCHECK (docker/facade/healthcheck.py) probes the address and port the service was started
with, read from PID 1's arguments."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "docker" / "facade" / "healthcheck.py"
_spec = importlib.util.spec_from_file_location("facade_healthcheck", _PATH)
assert _spec is not None and _spec.loader is not None
healthcheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(healthcheck)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["python", "-m", "app"], ("127.0.0.1", 8080)),  # the service's defaults
        (["python", "-m", "app", "--host", "127.0.0.1", "--port", "8181"], ("127.0.0.1", 8181)),
        (["python", "-m", "app", "--port=9000", "--workers", "2"], ("127.0.0.1", 9000)),
        (["python", "-m", "app", "--host", "0.0.0.0", "--port", "8080"], ("127.0.0.1", 8080)),  # wildcard: loopback
        (["python", "-m", "app", "--host", "::"], ("127.0.0.1", 8080)),
        (["python", "-m", "app", "--host", "::1", "--port", "81"], ("::1", 81)),
        (["python", "-m", "app", "--config", "/run/facade.toml", "--port"], ("127.0.0.1", 8080)),  # incomplete
    ],
)
def test_the_probe_follows_the_command_line(argv, expected):
    assert healthcheck.target(argv) == expected
