"""``python -m app --host 127.0.0.1 --port 8080``: settings from FACADE_* variables and an optional TOML file."""

from __future__ import annotations

import argparse
import gc
import os
import sys

import uvicorn

from .http.observability import log_config
from .main import create_app
from .settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="Imaging FHIR facade (FHIR R4 over DICOMweb)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--config",
        help="TOML settings file ([facade] table; default: $FACADE_CONFIG, else none: built-in defaults and "
        "FACADE_* variables only). Without a key source the service needs FACADE_AUTH_MODE=open to start.",
    )
    parser.add_argument(
        "--proxy-headers",
        action="store_true",
        help="trust X-Forwarded-Proto/For from the proxy in front (for links under https)",
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.load(os.environ, config_file=args.config)
    except SettingsError as exc:
        print(f"facade: configuration error: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    # Everything allocated so far (modules, settings, the app) lives as long as the process: move it out of the
    # cyclic GC's generations so full collections under load only walk request-time objects.
    gc.freeze()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        proxy_headers=args.proxy_headers,
        server_header=False,
        # uvicorn's access log prints full query strings (patient ids, names searched for): off. The facade's
        # own audit line (app.http.observability, logger facade.audit) records who saw which resources instead.
        access_log=False,
        log_config=log_config(settings.log_level, settings.log_format),
        timeout_graceful_shutdown=int(settings.shutdown_grace) or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
