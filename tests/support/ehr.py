"""A tiny EHR FHIR server for the EHR-linkage tests: fixed Patients, a bearer token, started as its own process.

with EhrProcess(patients, token="secret") as ehr:   # python -m tests.support.ehr on 127.0.0.1
    ehr.base        # http://127.0.0.1:<port>/fhir
    ehr.reads()     # Patient reads it has answered (to check the facade's cache)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.support.facade import ROOT, free_port, stop_process

MR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}


def ehr_patient(ehr_id: str, mrn: str, *, system: str, family: str) -> dict[str, Any]:
    """An EHR Patient with its MRN (typed MR) and an unrelated second identifier the facade must ignore."""
    return {
        "resourceType": "Patient",
        "id": ehr_id,
        "identifier": [
            {"system": "http://ehr.example.org/national-id", "value": f"N-{ehr_id}"},
            {"use": "usual", "type": MR, "system": system, "value": mrn},
        ],
        "name": [{"family": family}],
    }


def create_app(patients: Mapping[str, Any], token: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    reads = {"count": 0}

    async def read(request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"resourceType": "OperationOutcome", "issue": []}, 401)
        reads["count"] += 1
        patient = patients.get(request.path_params["id"])
        if patient is None:
            return JSONResponse({"resourceType": "OperationOutcome", "issue": []}, 404)
        return JSONResponse(patient, media_type="application/fhir+json")

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(reads)

    return Starlette(routes=[Route("/fhir/Patient/{id}", read), Route("/_reads", stats)])


class EhrProcess:
    def __init__(self, patients: Mapping[str, Any], *, token: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.token = token
        self._patients = dict(patients)
        self._proc: subprocess.Popen[bytes] | None = None
        self._file: str | None = None

    def reads(self) -> int:
        return int(httpx.get(f"http://127.0.0.1:{self.port}/_reads").json()["count"])

    def __enter__(self) -> EhrProcess:
        fd, self._file = tempfile.mkstemp(suffix=".json", prefix="ehr-")
        with os.fdopen(fd, "w") as f:
            json.dump(self._patients, f)
        cmd = [sys.executable, "-m", "tests.support.ehr", "--port", str(self.port), "--patients", self._file]
        self._proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ) | {"EHR_TOKEN": self.token})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()
                raise RuntimeError("the EHR test server exited")
            try:
                self.reads()
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the EHR test server did not start")

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        stop_process(self._proc)
        if self._file:
            Path(self._file).unlink(missing_ok=True)
            self._file = None


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--patients", required=True)
    args = parser.parse_args()
    patients = json.loads(Path(args.patients).read_text(encoding="utf-8"))
    app = create_app(patients, os.environ["EHR_TOKEN"])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
