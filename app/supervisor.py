"""``python -m app --workers N``: N uvicorn worker processes on one port, each with a listening socket of its own.

Why not uvicorn's own supervisor (``uvicorn --workers``): its workers share one listening socket, and whichever is
woken first accepts every connection waiting, so the few long-lived keep-alive connections of a FHIR client, a
viewer or a load balancer often all land on one worker while the others idle (measured: all 8 connections of a
load generator on one worker in several runs, bench/README.md). Here every worker listens on its own socket bound
with ``SO_REUSEPORT`` (Linux ≥ 3.9, socket(7)), and the kernel spreads new connections over the sockets by a hash
of their addresses. The sockets are bound here, in the parent, before any worker starts: a port in use fails at
once with one line, and a worker that dies is started again on the same socket, whose queue of waiting
connections the parent keeps open meanwhile.

Each worker builds its app with :func:`app.main.worker_app` (spawned, not forked: from the same environment and
settings file this process validated). SIGTERM or SIGINT stops them all, each given ``shutdown_grace`` to finish
its requests. A worker that cannot start (uvicorn's exit status 3, STARTUP_FAILURE) stops the rest and this
process with that status, as one process would: a service manager sees the failure instead of a restart loop.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import threading
from multiprocessing.context import SpawnProcess
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

__all__ = ["bind_sockets", "run"]

logger = logging.getLogger("app")

_RESTART_PAUSE = 0.5  # seconds before a worker that died is started again


def bind_sockets(host: str, port: int, count: int, *, backlog: int = 2048) -> list[socket.socket]:
    """``count`` listening sockets on one address, bound with SO_REUSEPORT; OSError if the address is in use."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # A listener of another program that also set SO_REUSEPORT (another facade started by mistake on the same
    # port) would share the port silently with ours: a first bind without it fails on any listener there.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]  # port 0: the ephemeral port chosen, which every socket then shares
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _serve(config: uvicorn.Config, sock: socket.socket) -> None:
    """A worker: its logging configured again (a spawned process starts with none), then uvicorn on its socket."""
    config.configure_logging()
    uvicorn.Server(config).run(sockets=[sock])


def run(config: uvicorn.Config, workers: int, *, shutdown_grace: float) -> int:
    """Serve with ``workers`` processes until SIGTERM/SIGINT; the exit status (3 when a worker could not start)."""
    try:
        sockets = bind_sockets(config.host, config.port, workers)
    except OSError as exc:
        print(f"facade: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    spawn = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def start(sock: socket.socket) -> SpawnProcess:
        process = spawn.Process(target=_serve, kwargs={"config": config, "sock": sock}, daemon=False)
        process.start()
        return process

    status = 0
    processes = [start(sock) for sock in sockets]
    logger.info("started %d workers [%s]", workers, ", ".join(str(p.pid) for p in processes))
    try:
        while not stop.wait(0.2):
            for index, process in enumerate(processes):
                if process.is_alive():
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    logger.error("worker [%s] could not start: stopping", process.pid)
                    status = STARTUP_FAILURE
                    stop.set()
                    break
                logger.warning("worker [%s] ended (status %s): starting another", process.pid, process.exitcode)
                if stop.wait(_RESTART_PAUSE):
                    break
                processes[index] = start(sockets[index])
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown in the worker
        for process in processes:
            process.join(shutdown_grace + 5)
            if process.is_alive():
                process.kill()
                process.join()
        for sock in sockets:
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
