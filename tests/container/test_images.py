"""What the facade image is (issue 23): non-root, under 400 MB, no compiler, package cache or test dependency, the
service as its entrypoint, a health check, and a graceful stop."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.support.containers import FACADE_IMAGE, ORTHANC_IMAGE, docker, image_inspect, listening, start_facade

pytestmark = pytest.mark.container

MAX_BYTES = 400 * 1000 * 1000  # "smaller than 400 MB", as docker image ls counts


def run(*command: str, entrypoint: str = "sh") -> str:
    """Run a command in a throw-away facade container (no network needed) and return its output."""
    done = docker("run", "--rm", "--network", "none", "--entrypoint", entrypoint, FACADE_IMAGE, *command)
    return done.stdout


def test_the_image_is_smaller_than_400_mb():
    size = image_inspect(FACADE_IMAGE)["Size"]
    assert size < MAX_BYTES, f"{size / 1e6:.0f} MB"


def test_it_runs_as_a_user_without_privileges():
    assert image_inspect(FACADE_IMAGE)["Config"]["User"] == "facade:facade"
    uid, gid, name = run("-c", "id -u; id -g; id -un").split()
    assert uid != "0" and gid != "0" and name == "facade"
    # Nothing it runs can write to the service's code or settings.
    assert run("-c", "touch /opt/facade/x /etc/imaging-fhir-facade/x 2>&1 || true").count("Permission denied") == 2


def test_no_compiler_package_manager_cache_or_test_dependency_is_in_it():
    assert run("-c", "for c in gcc cc c++ g++ cpp clang ld as make; do command -v $c; done; true").strip() == ""
    packages = set(run("-c", "dpkg-query -W -f '${Package}\\n'").split())
    compilers = {"gcc", "gcc-12", "g++", "g++-12", "cpp", "cpp-12", "build-essential", "binutils", "make"}
    assert not packages & (compilers | {"python3-pip", "python3-venv"})  # gcc-12-base is libgcc's, not a compiler
    assert not {p for p in packages if p.endswith("-dev")}
    # No .deb, package list, pip cache or pip in the image.
    leftovers = (
        "find /var/cache/apt /var/lib/apt/lists /root /tmp /opt -xdev"
        " \\( -name '*.deb' -o -path '*/lists/*_Packages' -o -path '*/.cache/pip' \\) 2>/dev/null; true"
    )
    assert run("-c", leftovers).strip() == ""
    modules = ["pip", "pytest", "respx", "hypothesis", "dicomweb_client", "fhirpy", "mypy", "ruff", "setuptools"]
    script = f"import importlib.util as u; print([m for m in {modules!r} if u.find_spec(m)])"
    assert run("-c", script, entrypoint="python").strip() == "[]"


def test_the_entrypoint_is_the_service_and_arguments_are_its_own():
    config = image_inspect(FACADE_IMAGE)["Config"]
    assert config["Entrypoint"] == ["python", "-m", "app"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    usage = docker("run", "--rm", "--network", "none", FACADE_IMAGE, "--help").stdout
    assert usage.startswith("usage: python -m app") and "--workers" in usage
    # A bad setting from the environment: exit 2 and one line, as outside a container.
    bad = docker("run", "--rm", "--network", "none", "-e", "FACADE_MAX_COUNT=many", FACADE_IMAGE, check=False)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("facade: configuration error:")


def test_the_health_check_follows_the_port_given_on_the_command_line(facade):
    deadline = time.monotonic() + 30
    while (state := facade.container.inspect()["State"]["Health"]["Status"]) == "starting":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert state == "healthy", facade.container.inspect()["State"]["Health"]["Log"][-1:]


def test_logs_are_json_lines_on_stdout(facade):
    # Issue 23: the log on stdout, every line a JSON object; stderr only for a start-up error.
    logged = docker("logs", facade.container.id or "")
    lines = [line for line in logged.stdout.splitlines() if line.strip()]
    assert lines and not logged.stderr.strip(), logged.stderr[-500:]
    records = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message"} <= set(records[0])


def test_sigterm_stops_the_service_cleanly(pacs):
    served = start_facade(pacs.dicomweb_url)
    try:
        started = time.monotonic()
        docker("stop", "--time", "20", served.container.id or "")
        took = time.monotonic() - started
        state = served.container.inspect()["State"]
        assert state["ExitCode"] == 0 and took < 10, (state, took)
    finally:
        served.container.stop()


def test_the_orthanc_image_answers_dicomweb_without_authentication(pacs):
    r = httpx.get(f"{pacs.dicomweb_url}/studies", params={"PatientID": "CONT0001"})
    assert r.status_code == 200 and len(r.json()) == 5
    config = image_inspect(ORTHANC_IMAGE)["Config"]
    assert config["User"] == "orthanc" and "/var/lib/orthanc/db" in config["Volumes"]


def test_every_server_listens_on_the_loopback_only(pacs, facade):
    assert listening(pacs.port) == {"127.0.0.1"}  # Orthanc 1.10 through docker/orthanc/loopback_bind.c
    assert listening(facade.port) == {"127.0.0.1"}
