"""``python -m app --host 127.0.0.1 --port 8080 [--workers N]``: settings from FACADE_* variables and an optional
TOML file."""

from __future__ import annotations

import argparse
import gc
import logging
import logging.config
import os
import sys
from typing import Any

import uvicorn

from . import supervisor
from .http.observability import log_config
from .settings import Settings, SettingsError

logger = logging.getLogger("app")


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
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes serving the one port (default 1); with more than one, set cache_redis_url so "
        "they share one cache",
    )
    args = parser.parse_args(argv)
    try:
        if args.workers < 1:
            raise SettingsError(f"--workers must be a positive integer, got {args.workers}")
        settings = Settings.load(os.environ, config_file=args.config)
    except SettingsError as exc:
        print(f"facade: configuration error: {exc}", file=sys.stderr)
        return 2
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": settings.log_level,
        "proxy_headers": args.proxy_headers,
        "server_header": False,
        # uvicorn's access log prints full query strings (patient ids, names searched for): off. The facade's
        # own audit line (app.http.observability, logger facade.audit) records who saw which resources instead.
        "access_log": False,
        "log_config": log_config(settings.log_level, settings.log_format),
        "timeout_graceful_shutdown": int(settings.shutdown_grace) or None,
    }
    if args.workers == 1:
        from .main import create_app

        app = create_app(settings)
        # Everything allocated so far (modules, settings, the app) lives as long as the process: move it out of
        # the cyclic GC's generations so full collections under load only walk request-time objects.
        gc.freeze()
        uvicorn.run(app, **options)
        return 0
    # Several workers (app.supervisor): each on a socket of its own, bound here; each builds its app with
    # app.main.worker_app from the same sources this process has just validated: the environment, and the file
    # named on the command line passed down as FACADE_CONFIG (it wins over an inherited one, as here).
    if args.config:
        os.environ["FACADE_CONFIG"] = os.path.abspath(args.config)
    logging.config.dictConfig(options["log_config"])
    if not settings.cache_redis_url:
        logger.warning(
            "%d workers with the in-process cache: each worker keeps its own QIDO and answer caches (a miss in "
            "each, memory in each), and a manifest created through one worker shows in the others' searches only "
            "when their entries expire (cache_ttl %.0f s). Set cache_redis_url to share one cache.",
            args.workers,
            settings.cache_ttl,
        )
    config = uvicorn.Config("app.main:worker_app", factory=True, **options)
    return supervisor.run(config, args.workers, shutdown_grace=settings.shutdown_grace)


if __name__ == "__main__":
    sys.exit(main())
