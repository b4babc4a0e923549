"""The README's demo must keep working: run it in --check mode (its own Orthanc, the facade, the queries)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.facade import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "scripts" / "demo.py")


def test_demo_runs_its_example_queries(tmp_path):
    port = free_port()
    done = subprocess.run(
        [sys.executable, DEMO, "--check", "--port", str(port)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = done.stdout
    assert done.returncode == 0, out[-2000:] + done.stderr[-2000:]
    assert out.count("-> HTTP 200") == 13  # 11 examples, the study download and the viewer page
    assert f"Viewer: http://127.0.0.1:{port}/viewer?patient=" in out
    # Progress a person can follow, in order, and what to open at the end.
    steps = ["Starting a private Orthanc", "Orthanc is up", "Loading 13 studies", "Starting the facade", "Ready"]
    positions = [out.index(step) for step in steps]
    assert positions == sorted(positions)
    assert f"Open in a browser: http://127.0.0.1:{port}/" in out
    assert f"'http://127.0.0.1:{port}/dicomweb/studies/" in out  # the WADO-RS download line, through the gateway
    assert "bytes (--check)" in out
    # A ready OHIF configuration: the gateway is its DICOMweb data source (issue 20).
    assert "npm pack @ohif/app@3.13.2" in out and "window.config = {" in out
    assert f'"qidoRoot": "http://127.0.0.1:{port}/dicomweb"' in out
    # No machine log lines (JSON) among the human output.
    assert not [line for line in (out + done.stderr).splitlines() if line.lstrip().startswith('{"')]
    # selection.json is a manifest of the demo data, and the demo POSTed it (201) in --check mode.
    body = json.loads((tmp_path / "selection.json").read_text(encoding="utf-8"))
    assert body["resourceType"] == "ImagingSelection" and body["instance"]
    assert "-> HTTP 201 (selection.json POSTed" in out


def test_demo_fails_loudly_on_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, DEMO, "--check", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr
    assert "Ready" not in done.stdout and "HTTP 200" not in done.stdout
