"""Load the synthetic demo dataset (tests/support/dataset.py: build_dataset) into a DICOMweb PACS.

    python scripts/demo_data.py --dicomweb-url http://127.0.0.1:8042/dicom-web
    python scripts/demo_data.py --serve --port 8042          # start a private Orthanc, load, keep running

Storing is idempotent on Orthanc (OverwriteInstances), so running it twice is harmless.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python scripts/demo_data.py` only puts scripts/ on the path

from tests.support.dataset import build_dataset  # noqa: E402
from tests.support.orthanc import OrthancServer, StowError, store  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--dicomweb-url", help="DICOMweb root of a running PACS")
    target.add_argument("--serve", action="store_true", help="start a private Orthanc, load it, keep it up")
    parser.add_argument("--port", type=int, help="with --serve: HTTP port (default: a free one)")
    parser.add_argument("--storage-dir", type=Path, help="with --serve: keep the PACS data in this folder")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default 7, as in the tests)")
    parser.add_argument("--batch", type=int, default=50, help="instances per STOW-RS request")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the PACS to answer")
    return parser.parse_args(argv)


def _wait_for(dicomweb_url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(dicomweb_url.rstrip("/") + "/studies?limit=1", timeout=2.0)
            return
        except httpx.TransportError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def load(dicomweb_url: str, *, seed: int, batch: int) -> None:
    started = time.perf_counter()
    datasets, manifest = build_dataset(seed=seed)
    stored = store(dicomweb_url, datasets, batch=batch)
    print(
        f"stored {stored} instances: {len(manifest.patients)} patients, {len(manifest.studies)} studies, "
        f"{manifest.n_series} series in {time.perf_counter() - started:.2f} s -> {dicomweb_url}"
    )


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if not args.serve:
            _wait_for(args.dicomweb_url, args.wait)
            load(args.dicomweb_url, seed=args.seed, batch=args.batch)
            return 0
        extra = {"HttpPort": args.port} if args.port is not None else {}
        with OrthancServer(extra_config=extra, storage_dir=args.storage_dir) as server:
            load(server.dicomweb_url, seed=args.seed, batch=args.batch)
            print(f"Orthanc pid {server.pid} serving {server.dicomweb_url}; Ctrl-C to stop", flush=True)
            signal.signal(signal.SIGTERM, _stop_on_sigterm)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0
    except (httpx.HTTPError, StowError, RuntimeError) as exc:
        print(f"demo_data: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
