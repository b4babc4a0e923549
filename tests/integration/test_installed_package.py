"""The service as `pip install .` leaves it: non-editable, in a virtualenv of its own, started outside the checkout.

It must fail closed (no key source and no explicit open mode: one line, exit status 2), and its defaults must be
the documented ones wherever it starts from (no config/facade.toml beside an installed package).
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
import time
import venv
from pathlib import Path

import httpx
import pytest

from tests.support.facade import ROOT, free_port, stop_process

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtualenv holding the package (a wheel built from the checkout, not editable); its dependencies are the
    test environment's own, reached through a .pth file, so nothing but the build backend is downloaded."""
    home = tmp_path_factory.mktemp("installed")
    env_dir = home / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "test-deps.pth").write_text("\n".join(sorted(deps)) + "\n", encoding="utf-8")
    done = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=home,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    where = subprocess.run(
        [python, "-c", "import app; print(app.__file__)"], capture_output=True, text=True, check=True, cwd=home
    ).stdout.strip()
    assert where.startswith(str(env_dir)), f"app imported from {where}, not from the installed package"
    return python


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACADE_") and k != "PYTHONPATH"}
    return env | extra


def test_an_installed_service_refuses_to_start_without_a_key_source(installed, tmp_path):
    done = subprocess.run(
        [installed, "-m", "app", "--port", "0"],
        env=_clean_env(FACADE_DICOMWEB_URL="http://127.0.0.1:8042/dicom-web"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("facade: configuration error: auth_mode 'smart' needs jwks_url, jwks_file or")
    assert "FACADE_AUTH_MODE=open" in lines[0]


def test_an_installed_service_needs_the_pacs_url(installed, tmp_path):
    done = subprocess.run(
        [installed, "-m", "app"], env=_clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "facade: configuration error: dicomweb_url is required (set FACADE_DICOMWEB_URL or [facade].dicomweb_url), "
        "or [[sources]]"
    )


def test_an_installed_service_starts_when_open_mode_is_explicit(installed, tmp_path, orthanc):
    port = free_port()
    log = tmp_path / "facade.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [installed, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
            env=_clean_env(FACADE_DICOMWEB_URL=orthanc.dicomweb_url, FACADE_AUTH_MODE="open"),
            cwd=tmp_path,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text(encoding="utf-8", errors="replace")
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/fhir/R4/ImagingStudy?_count=1", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the installed service did not answer in 30 s"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["resourceType"] == "Bundle"
    finally:
        stop_process(proc)


def test_the_help_names_no_path_inside_the_package(installed, tmp_path):
    done = subprocess.run(
        [installed, "-m", "app", "--help"], env=_clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "config/facade.toml" not in done.stdout and "FACADE_CONFIG" in done.stdout
