"""A private, throw-away Redis for integration tests (Debian's ``redis-server``).

    with RedisServer() as server:
        cache = RedisCache.from_url(server.url, ttl=60)
        ...
        server.pause()    # SIGSTOP, as a hung Redis: connections stay open, nothing answers; resume() undoes it
        server.kill()     # SIGKILL, as a crashed Redis: clients see refused connections from now on

Each server listens on 127.0.0.1 only, on a free port (the same one again after :meth:`RedisServer.restart`), with
persistence off (``--save "" --appendonly no``) and its working directory and log in a temporary directory that is
deleted on stop. It is stopped by PID, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["DEFAULT_BINARY", "RedisServer", "RedisStartError", "redis_binary"]

DEFAULT_BINARY = "/usr/bin/redis-server"


class RedisStartError(RuntimeError):
    """redis-server did not come up; the message ends with the tail of its log."""


def redis_binary() -> str | None:
    """Path of redis-server, or None when it is not installed (``apt-get install redis-server``)."""
    found = shutil.which("redis-server")
    if found:
        return found
    return DEFAULT_BINARY if os.access(DEFAULT_BINARY, os.X_OK) else None


def _free_port() -> int:
    # A small race until redis-server binds it; start() tries again with a fresh port if the server exits.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """Start a private redis-server; use as a context manager (or call start()/stop())."""

    def __init__(self, *, binary: str | None = None, startup_timeout: float = 10.0) -> None:
        self._binary = binary or redis_binary()
        self._startup_timeout = startup_timeout
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("RedisServer is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("RedisServer is not running")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("RedisServer is not started")
        return self._tmp / "redis.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, RuntimeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> RedisServer:
        if self._proc is not None:
            raise RuntimeError("RedisServer already started")
        if self._binary is None:
            raise RedisStartError("redis-server not found (apt-get install redis-server)")
        self._tmp = Path(tempfile.mkdtemp(prefix="redis-test-"))
        try:
            for attempt in range(1, 4):
                self._port = _free_port()
                if self._launch():
                    return self
                if attempt == 3:
                    raise RedisStartError(f"redis-server exited during start-up; log tail:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def kill(self) -> None:
        """SIGKILL the server (a crash: no goodbye to clients); the port and directory are kept for restart()."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing answers (a hung Redis)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Start again on the same port (after kill()), empty."""
        if self._proc is not None:
            raise RuntimeError("RedisServer is running")
        if not self._launch():
            raise RedisStartError(f"redis-server did not restart on port {self.port}; log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the server by PID (SIGTERM, then SIGKILL after 10 s) and delete the temporary directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # in case it was paused: a stopped process ignores SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------------------

    def _launch(self) -> bool:
        """Start redis-server on self.port; True once it answers PING, False if it exited (port taken)."""
        assert self._binary is not None and self._tmp is not None
        command = [
            self._binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._tmp),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=self._tmp)
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if self._ping():
                return True
            if time.monotonic() > deadline:
                raise RedisStartError(
                    f"redis-server (pid {self._proc.pid}) did not answer PING on port {self.port} within "
                    f"{self._startup_timeout:.0f} s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
