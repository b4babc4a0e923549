"""The image's HEALTHCHECK: GET /healthz where the service listens, read from PID 1's arguments (python -m app
--host H --port P), so ``docker run imaging-fhir-facade --port 8181`` is checked on 8181. Exit 0 when healthy."""

from __future__ import annotations

import sys
import urllib.request


def target(argv: list[str]) -> tuple[str, int]:
    host, port = "127.0.0.1", 8080  # app/__main__.py's defaults
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if name == "--host" and value:
            host = value
        elif name == "--port" and value.isdigit():
            port = int(value)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return host, port


def main() -> int:
    with open("/proc/1/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    host, port = target(argv)
    if ":" in host:
        host = f"[{host}]"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as r:
            return 0 if r.status == 200 else 1
    except OSError as exc:
        print(f"healthz: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
