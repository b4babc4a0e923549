"""OHIF 3.13.2 (the most used web viewer) opens studies through the gateway in headless Chromium (issue 20).

OHIF's published build comes from the package registry at test time (``npm pack @ohif/app@3.13.2``, its ready
``dist/`` unpacked into ``.cache/ohif``, never committed; the 113 MB ``dist/ort`` and the source maps are not
needed to view images), with puppeteer-core driving Debian's chromium (tests/support/ohif_driver.cjs). ``dist/`` is
served from a loopback port with an ``app-config.js`` of the test's own (tests/support/ohif.py, which the demo
prints), whose DICOMweb data source is the Endpoint.address under test; shared/docs/viewers.md has what OHIF asks.
Cases: smart mode with a patient token handed over OHIF's way (``&token=``), a capability address without a
token, open mode; each waits for a viewport canvas with real pixels. The viewer's study lookups (the study browser's
list of the patient's studies, found by PatientID) answer only the patient's studies, and another patient's study
UID in the address opens nothing. (OHIF reads ``&token=`` on viewer routes only: its study list page needs an
OpenID Connect login, which is out of scope here.)

Data: tests/integration/test_gateway_qido.py's Orthanc (patient QIDO0001: studies A and A2; QIDO0002: B; the
same PatientID of another issuer: C).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.integration.test_gateway_qido import (  # noqa: F401  (fixtures)
    CAP_KEYS,
    P1,
    READ,
    Pacs,
    _settings,
    capability_root,
    pacs,
)
from tests.integration.test_wado_gateway import KEYS, Served
from tests.support.facade import free_port
from tests.support.ohif import VERSION, app_config

pytestmark = pytest.mark.integration
PUPPETEER = "24.43.1"  # 25.x needs Node >= 22.12
CHROMIUM = "/usr/bin/chromium"
CACHE = Path(os.environ.get("FACADE_TEST_CACHE", Path(__file__).resolve().parents[2] / ".cache")) / "ohif"
DRIVER = Path(__file__).resolve().parents[1] / "support" / "ohif_driver.cjs"


def _missing(what: str) -> None:
    if os.environ.get("FACADE_TESTS_REQUIRE_ORTHANC") == "1":
        pytest.fail(f"{what} is needed for the OHIF browser test")
    pytest.skip(f"{what} is not available")


@pytest.fixture(scope="session")
def ohif() -> tuple[Path, Path]:
    """OHIF's dist/ and puppeteer-core, fetched from the npm registry once into the cache."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        _missing("node and npm")
    if not Path(CHROMIUM).exists():
        _missing("Debian's chromium")
    dist = CACHE / VERSION / "package" / "dist"
    if not (dist / "index.html").exists():
        home = CACHE / VERSION
        home.mkdir(parents=True, exist_ok=True)
        npm = ["npm", "pack", f"@ohif/app@{VERSION}", "--silent", "--pack-destination", str(home)]
        subprocess.run(npm, check=True, timeout=900, capture_output=True)
        tarball = home / f"ohif-app-{VERSION}.tgz"
        untar = ["tar", "xzf", str(tarball), "-C", str(home), "--exclude=package/dist/ort", "--exclude=*.map"]
        subprocess.run(untar, check=True, timeout=300)
        tarball.unlink()
    module = CACHE / "puppeteer" / "node_modules" / "puppeteer-core"
    if not module.exists():
        (CACHE / "puppeteer").mkdir(parents=True, exist_ok=True)
        install = ["npm", "install", "--prefix", str(CACHE / "puppeteer"), "--ignore-scripts", "--no-audit"]
        subprocess.run([*install, "--no-fund", f"puppeteer-core@{PUPPETEER}"], check=True, timeout=900)
    return dist, module


class Ohif:
    """dist/ on 127.0.0.1 (a free port): our app-config.js, files as they are, any other path index.html."""

    def __init__(self, dist: Path, root: str, port: int) -> None:
        config = app_config(root).encode()

        class Handler(SimpleHTTPRequestHandler):
            extensions_map: ClassVar[dict[str, str]] = {
                **SimpleHTTPRequestHandler.extensions_map,
                ".wasm": "application/wasm",
            }

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/app-config.js":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/javascript")
                    self.send_header("Content-Length", str(len(config)))
                    self.end_headers()
                    self.wfile.write(config)
                    return
                if path == "/" or not (dist / path.lstrip("/")).is_file():
                    self.path = "/index.html"
                super().do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = port
        self.origin = f"http://127.0.0.1:{self.port}"
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), partial(Handler, directory=str(dist)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Ohif:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def drive(ohif: tuple[Path, Path], url: str, watch: str, seconds: int = 60) -> dict[str, Any]:
    args = {"puppeteer": str(ohif[1]), "chromium": CHROMIUM, "url": url, "watch": watch, "seconds": seconds}
    done = subprocess.run(
        ["node", str(DRIVER), json.dumps(args)], capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


PORT_OHIF = free_port()  # the viewer's origin is the facade's CORS allow-list; fixed before the facade starts


@pytest.fixture(scope="module")
def smart(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:  # noqa: F811
    port = free_port()
    settings = _settings(
        pacs,
        tmp_path_factory,
        port,
        cors_origins=(f"http://127.0.0.1:{PORT_OHIF}",),
        wado_access="capability",
        capability_keys=CAP_KEYS,
    )
    with Served(settings, port) as served:
        yield served


@pytest.fixture(scope="module")
def open_facade(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:  # noqa: F811
    port = free_port()
    settings = _settings(pacs, tmp_path_factory, port, open=True, cors_origins=(f"http://127.0.0.1:{PORT_OHIF}",))
    with Served(settings, port) as served:
        yield served


def serve(dist: Path, root: str) -> Ohif:
    return Ohif(dist, root, PORT_OHIF)  # the origin the facade's CORS allow-list names


def frames_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in result["requests"] if "/frames/" in r["url"] and r["status"] == 200]


def test_smart_mode_with_a_patient_token(ohif: tuple[Path, Path], smart: Served, pacs: Pacs) -> None:  # noqa: F811
    root = f"{smart.root}/dicomweb"
    token = KEYS.token(READ, P1)
    with serve(ohif[0], root) as viewer:
        result = drive(ohif, f"{viewer.origin}/viewer?StudyInstanceUIDs={pacs.uid('a')}&token={token}", root)
    assert result["rendered"], result
    assert frames_of(result) and all(r["auth"] for r in result["requests"] if r["method"] == "GET")
    assert not [r for r in result["requests"] if r["status"] >= 400], result["requests"]  # thumbnails included
    assert [r for r in result["requests"] if "/thumbnail?" in r["url"] and r["status"] == 200]
    assert all(token not in r["url"] for r in result["requests"])  # the token goes in a header only
    # The study lookup and the prior-study lookup (PatientID=QIDO0001: C, another issuer's, must not come back).
    assert any("00100020=QIDO0001" in r["url"] or "PatientID=QIDO0001" in r["url"] for r in result["requests"])
    # The viewer's study browser lists the study and its priors: both of the patient's studies, and not C, whose
    # PatientID is the same (another issuer's patient, which Orthanc's own answer to that lookup would include).
    assert set(result["studies"]) == pacs.mine, result["studies"]
    assert not [sop for sop in pacs.rejected if sop in json.dumps(result["requests"])]


def test_capability_address_without_a_token(ohif: tuple[Path, Path], smart: Served, pacs: Pacs) -> None:  # noqa: F811
    root = capability_root(smart, pacs, pacs.uid("a"), P1)
    with serve(ohif[0], root) as viewer:
        result = drive(ohif, f"{viewer.origin}/viewer?StudyInstanceUIDs={pacs.uid('a')}", f"{smart.root}/dicomweb")
    assert result["rendered"], result
    assert frames_of(result) and not any(r["auth"] for r in result["requests"])
    assert not [r for r in result["requests"] if r["status"] >= 400], result["requests"]
    assert set(result["studies"]) == {pacs.uid("a")}


def test_open_mode(ohif: tuple[Path, Path], open_facade: Served, pacs: Pacs) -> None:  # noqa: F811
    root = f"{open_facade.root}/dicomweb"
    with serve(ohif[0], root) as viewer:
        result = drive(ohif, f"{viewer.origin}/viewer?StudyInstanceUIDs={pacs.uid('b')}", root)
    assert result["rendered"], result
    assert pacs.uid("b") in result["studies"]


def test_another_patients_study_opens_nothing(ohif: tuple[Path, Path], smart: Served, pacs: Pacs) -> None:  # noqa: F811
    root = f"{smart.root}/dicomweb"
    token = KEYS.token(READ, P1)
    for study in (pacs.uid("b"), pacs.uid("c")):  # another patient's; the same PatientID of another issuer
        with serve(ohif[0], root) as viewer:
            result = drive(ohif, f"{viewer.origin}/viewer?StudyInstanceUIDs={study}&token={token}", root, seconds=20)
        assert not result["rendered"] and not frames_of(result), result
        assert result["studies"] == [] and result["path"] == "/notfoundstudy", result
        assert not [r for r in result["requests"] if "/metadata" in r["url"] and r["status"] == 200]
