"""Run the facade as a real server process (``python -m app``) on 127.0.0.1, for the demo and end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a TIME_WAIT port is free
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM to this PID only, SIGKILL after 10 s; nothing if it is not running."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class FacadeProcess:
    """``with FacadeProcess(dicomweb_url) as facade: facade.base`` — started, answering, stopped by PID."""

    def __init__(
        self,
        dicomweb_url: str,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        args: Sequence[str] = (),
    ) -> None:
        """``log``: a file for the server's output (default: inherited stdout/stderr); ``args``: more command-line
        options (``["--workers", "2"]``)."""
        self.port = port or free_port()
        self.log_path = log
        self.base = f"http://127.0.0.1:{self.port}/fhir/R4"
        # Open mode (the shipped config says smart): the demo and these tests run without an authorization server.
        self._env = dict(os.environ) | {
            "FACADE_DICOMWEB_URL": dicomweb_url,
            "FACADE_LOG_LEVEL": "warning",
            "FACADE_AUTH_MODE": "open",
        }
        self._env |= dict(env or {})
        self._args = list(args)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> FacadeProcess:
        if not port_is_free(self.port):
            # Another server there would answer the readiness probe below for us (and a demo would show its data).
            raise RuntimeError(f"port {self.port} on 127.0.0.1 is in use by another program")
        cmd = [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(self.port), *self._args]
        out = self.log_path.open("ab") if self.log_path else None
        try:
            self._proc = subprocess.Popen(cmd, cwd=ROOT, env=self._env, stdout=out, stderr=out)
        finally:
            if out is not None:
                out.close()
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _wait(self, timeout: float = 30.0) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the facade exited with status {self._proc.returncode}")
            try:
                if httpx.get(f"{self.base}/metadata", timeout=1).status_code == 200 and self.alive:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the facade did not answer within {timeout:.0f} s")

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        stop_process(self._proc)
