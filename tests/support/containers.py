"""Containers from the project's images (``bash scripts/images``) for tests, on the host's network.

    with Container(ORTHANC_IMAGE, env={"ORTHANC_HTTP_PORT": "18042"}) as pacs:
        pacs.wait_http("http://127.0.0.1:18042/system")

Every container is started with ``docker run --detach --network host`` (the engine runs without a bridge; each
server binds 127.0.0.1 itself) and is stopped and removed by its id, with its anonymous volumes, on exit.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

__all__ = [
    "FACADE_IMAGE",
    "IMAGES",
    "ORTHANC_IMAGE",
    "REDIS_IMAGE",
    "Container",
    "ContainerError",
    "Facade",
    "docker",
    "engine_problem",
    "image_inspect",
    "listening",
    "start_facade",
]

FACADE_IMAGE = "imaging-fhir-facade:latest"
ORTHANC_IMAGE = "imaging-fhir-facade-orthanc:latest"
REDIS_IMAGE = "imaging-fhir-facade-redis:latest"
IMAGES = (FACADE_IMAGE, ORTHANC_IMAGE, REDIS_IMAGE)


class ContainerError(RuntimeError):
    """A docker command failed, or a container did not come up; the message ends with the container's log."""


def docker(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the docker client; with ``check``, a non-zero exit raises ContainerError with its stderr."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise ContainerError(f"docker {' '.join(args[:3])} ... exited {done.returncode}: {done.stderr.strip()}")
    return done


def engine_problem() -> str | None:
    """Why the container tests cannot run here (no client, no engine, an image not built), or None."""
    if shutil.which("docker") is None:
        return "no docker client (apt-get install docker.io)"
    try:
        version = docker("version", "--format", "{{.Server.Version}}", timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer"
    if version.returncode != 0:
        return f"no Docker engine answers ({version.stderr.strip()[:200]})"
    missing = [image for image in IMAGES if docker("image", "inspect", image, check=False).returncode != 0]
    if missing:
        return f"image(s) {', '.join(missing)} not built (bash scripts/images)"
    return None


def listening(port: int) -> set[str]:
    """The local addresses of the host's listening TCP sockets on ``port`` (the containers share the host's
    network), from /proc/net/tcp and tcp6: "127.0.0.1", "0.0.0.0", "::1", "::", ..."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port and len(address) == width:
                    raw = bytes.fromhex(address)
                    # /proc prints each 32-bit word in host (little-endian) order
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    found.add(str(ipaddress.ip_address(words)))
    return found


def image_inspect(image: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(docker("image", "inspect", image).stdout)
    return found[0]


class Container:
    """One ``docker run --detach --network host`` container; a context manager that removes it by id.

    **Parameters:**
    * image - the image; ``args`` - arguments after the image name (the entrypoint's own).
    * env - environment variables; ``volumes`` - ``-v`` specifications; ``options`` - more ``docker run`` options.
    """

    def __init__(
        self,
        image: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        volumes: Sequence[str] = (),
        options: Sequence[str] = (),
    ) -> None:
        self.image = image
        self._args = list(args)
        self._env = dict(env or {})
        self._volumes = list(volumes)
        self._options = list(options)
        self.id: str | None = None

    def start(self) -> Container:
        if self.id is not None:
            raise RuntimeError("container already started")
        command = ["run", "--detach", "--network", "host", *self._options]
        for key, value in self._env.items():
            command += ["--env", f"{key}={value}"]
        for volume in self._volumes:
            command += ["--volume", volume]
        self.id = docker(*command, self.image, *self._args).stdout.strip()
        return self

    def stop(self, *, timeout: int = 10) -> None:
        """``docker stop`` (SIGTERM, SIGKILL after ``timeout`` s), then ``docker rm -v``: by id, nothing left."""
        cid, self.id = self.id, None
        if cid is None:
            return
        docker("stop", "--time", str(timeout), cid, check=False, timeout=timeout + 60)
        docker("rm", "--force", "--volumes", cid, check=False)

    def inspect(self) -> dict[str, Any]:
        assert self.id is not None
        found: list[dict[str, Any]] = json.loads(docker("inspect", self.id).stdout)
        return found[0]

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def logs(self, tail: int = 40) -> str:
        if self.id is None:
            return "(not started)"
        done = docker("logs", "--tail", str(tail), self.id, check=False)
        return (done.stdout + done.stderr).strip()

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        assert self.id is not None
        return docker("exec", self.id, *command, check=False)

    def wait_http(self, url: str, *, timeout: float = 60.0) -> None:
        """Until ``GET url`` answers 200; ContainerError (with the log) if the container exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if not self.running():
                raise ContainerError(f"{self.image} exited during start-up; log:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise ContainerError(f"{self.image}: no 200 from {url} within {timeout:.0f} s; log:\n{self.logs()}")
            time.sleep(0.2)

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Facade:
    """A facade container serving on 127.0.0.1:``port`` (root: the origin; base: the FHIR R4 base)."""

    container: Container
    port: int

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return self.root + "/fhir/R4"


def start_facade(
    dicomweb_url: str,
    *,
    env: Mapping[str, str] | None = None,
    volumes: Sequence[str] = (),
    options: Sequence[str] = (),
) -> Facade:
    """The facade image on a free port (the service's own --host/--port arguments), answering /readyz."""
    port = _free_port()
    container = Container(
        FACADE_IMAGE,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env={"FACADE_DICOMWEB_URL": dicomweb_url, "FACADE_AUTH_MODE": "open"} | dict(env or {}),
        volumes=volumes,
        options=options,
    ).start()
    try:
        container.wait_http(f"http://127.0.0.1:{port}/readyz")
    except BaseException:
        container.stop()
        raise
    return Facade(container, port)
