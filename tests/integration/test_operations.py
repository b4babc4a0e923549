"""The service process: JSON log lines with request ids and an audit line, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.support.facade import ROOT, free_port

pytestmark = pytest.mark.integration


def test_json_logs_audit_and_graceful_shutdown(orthanc):
    port = free_port()
    env = dict(os.environ) | {
        "FACADE_DICOMWEB_URL": orthanc.dicomweb_url,
        "FACADE_LOG_LEVEL": "info",
        "FACADE_AUTH_MODE": "open",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/fhir/R4"
        for _ in range(100):
            try:
                if httpx.get(f"{base}/metadata", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        uid = orthanc.manifest.studies[0].study_uid
        r = httpx.get(f"{base}/ImagingStudy/{uid}", headers={"X-Request-ID": "req-42"})
        assert r.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)  # this PID only
        try:
            code = proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status says SIGTERM; the log says
    # whether shutdown was orderly.
    assert code in (0, -signal.SIGTERM)
    assert proc.stdout is not None
    with proc.stdout:  # the log is on stdout (issue 23)
        lines = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
    audit = [x for x in lines if x["logger"] == "facade.audit"]
    assert any(x["request_id"] == "req-42" and f"ImagingStudy/{uid}" in x["resources"] for x in audit), lines
    assert any(x["message"].startswith("Finished server process") for x in lines), lines
    names = {s.patient_name.split("^")[0] for s in orthanc.manifest.studies}
    assert not any(n in json.dumps(audit, ensure_ascii=False) for n in names)
