"""A private, throw-away Orthanc (with the DICOMweb plugin) for integration tests and demos.

    with OrthancServer() as pacs:
        store(pacs.dicomweb_url, datasets)
        httpx.get(pacs.dicomweb_url + "/studies?PatientName=M*ller*")

Each server gets its own temporary directory (config, log, and by default the SQLite index and the
storage), a free HTTP port on 127.0.0.1, and no DICOM listener. It is stopped by PID on exit.

Orthanc 1.10 has no bind-address option: civetweb listens on every interface. ``RemoteAccessAllowed:
false`` makes it answer loopback clients only (others get 403), and ``DicomServerEnabled: false`` means
that no DICOM (DIMSE) port is opened at all.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from pydicom import Dataset
from pydicom.filewriter import dcmwrite

__all__ = [
    "DEFAULT_DICOMWEB_PLUGIN",
    "OrthancServer",
    "OrthancStartError",
    "StowError",
    "base_config",
    "dicomweb_plugin",
    "encode_dataset",
    "orthanc_binary",
    "store",
]

DEFAULT_BINARY = "/usr/sbin/Orthanc"
DEFAULT_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

# (0008,1198) FailedSOPSequence and (0008,1199) ReferencedSOPSequence in a STOW-RS response (PS3.18 10.5.3).
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILURE_REASON = "00081197"
_REFERENCED_SOP_INSTANCE_UID = "00081155"


class OrthancStartError(RuntimeError):
    """Orthanc did not come up; the message ends with the tail of its log."""


class StowError(RuntimeError):
    """A STOW-RS request was refused, or some instances in it failed."""


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or None when Orthanc is not installed (tests then skip)."""
    found = shutil.which("Orthanc")
    if found:
        return found
    if os.access(DEFAULT_BINARY, os.X_OK):
        return DEFAULT_BINARY
    return None


def dicomweb_plugin() -> str | None:
    """Path of the DICOMweb plugin shared object, or None when it is not installed."""
    return DEFAULT_DICOMWEB_PLUGIN if os.path.isfile(DEFAULT_DICOMWEB_PLUGIN) else None


def _free_port() -> int:
    # Ask the kernel for an ephemeral port on loopback. There is a small race until Orthanc binds it;
    # OrthancServer.start() retries with a fresh port if Orthanc exits during start-up.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``extra``; nested dicts (e.g. "DicomWeb") are merged key by key."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def base_config(*, http_port: int, storage_dir: Path, plugin: str) -> dict[str, Any]:
    """The Orthanc configuration the harness uses before ``extra_config`` is merged in.

    Choices that matter for the facade (see shared/docs/orthanc-qido.md):
    - ``StorageAccessOnFind: Always``: matching on non-main tags (IssuerOfPatientID, Laterality,
      SOPClassUID) otherwise returns 0 results silently.
    - ``LimitFindResults/LimitFindInstances: 0``: any other value silently truncates QIDO answers.
    - ``DefaultEncoding: Utf8``: with Orthanc's shipped default (Latin1), QIDO answers are transcoded to
      ISO_IR 100 and anything outside Latin-1 is lost: "Yamada^Tarou=山田^太郎=やまだ^たろう" comes back as
      Alphabetic "Yamada^Tarou", Ideographic "^", Phonetic "^". WADO-RS /metadata is not affected.
    - ``DicomWeb.Host`` is left unset: RetrieveURL/BulkDataURI then follow the request's Host header
      (127.0.0.1:<port> for a direct client) and honour ``Forwarded``, so a proxy test stays possible.
      Setting it would hard-code one host for every request.
    """
    return {
        "Name": f"facade-test-{http_port}",
        "StorageDirectory": str(storage_dir / "storage"),
        "IndexDirectory": str(storage_dir),
        "StorageCompression": False,
        "DefaultEncoding": "Utf8",
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "KeepAlive": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "DicomAet": "FACADETEST",
        "Plugins": [plugin],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
        "StorageAccessOnFind": "Always",
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "OverwriteInstances": True,
        "SaveJobs": False,
        "ConcurrentJobs": 2,
    }


class OrthancServer:
    """Start a private Orthanc; use as a context manager (or call start()/stop()).

    **Parameters:**
    * extra_config - merged (recursively, so ``{"DicomWeb": {"QidoCaseSensitive": True}}`` keeps the
      other DicomWeb keys) into :func:`base_config`.
    * storage_dir - keep the SQLite index and DICOM files there (created if needed, never deleted),
      e.g. for a demo. By default they live in the temporary directory and go away on stop().
    * binary / plugin - override the Orthanc executable and DICOMweb plugin paths.
    * startup_timeout - seconds to wait for ``GET /system`` to answer.
    """

    def __init__(
        self,
        *,
        extra_config: Mapping[str, Any] | None = None,
        storage_dir: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        plugin: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self._extra_config: Mapping[str, Any] = extra_config or {}
        self._storage_dir = Path(storage_dir) if storage_dir is not None else None
        self._binary = binary or orthanc_binary()
        self._plugin = plugin or dicomweb_plugin()
        self._startup_timeout = startup_timeout
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: io.BufferedWriter | None = None
        self._port: int | None = None
        self.config: dict[str, Any] = {}

    # -- public surface -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("OrthancServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """Orthanc's REST root, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root without a trailing slash, e.g. ``http://127.0.0.1:41234/dicom-web``."""
        return self.url + "/dicom-web"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("OrthancServer is not started")
        return self._proc.pid

    @property
    def workdir(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("OrthancServer is not started")
        return self._tmp

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, RuntimeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> OrthancServer:
        if self._proc is not None:
            raise RuntimeError("OrthancServer already started")
        if self._binary is None:
            raise OrthancStartError("Orthanc executable not found (apt-get install orthanc)")
        if self._plugin is None:
            raise OrthancStartError(
                f"DICOMweb plugin not found at {DEFAULT_DICOMWEB_PLUGIN} (apt-get install orthanc-dicomweb)"
            )
        self._tmp = Path(tempfile.mkdtemp(prefix="orthanc-test-"))
        try:
            self._start_with_retries(attempts=3)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate Orthanc by PID (SIGTERM, then SIGKILL after 10 s) and delete the temporary directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def halt(self) -> None:
        """Stop the Orthanc process as :meth:`stop` does but keep its directory, port and configuration, so that
        :meth:`resume` starts it again (a restart while its clients run)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)

    def resume(self, *, storage_dir: str | os.PathLike[str] | None = None) -> None:
        """Start Orthanc again after :meth:`halt`, on the same port with the same configuration and storage, or
        with the SQLite index and DICOM files in ``storage_dir`` (created if needed: a new, empty database)."""
        if self._proc is not None:
            raise RuntimeError("OrthancServer is running")
        if storage_dir is not None:
            path = Path(storage_dir).resolve()
            path.mkdir(parents=True, exist_ok=True)
            self.config |= {"StorageDirectory": str(path / "storage"), "IndexDirectory": str(path)}
            self.config_path.write_text(json.dumps(self.config, indent=2), encoding="utf-8")
        self._spawn()
        try:
            self._wait_ready()
        except _ExitedEarly:
            self._proc = None
            raise OrthancStartError(f"Orthanc exited during its restart; log tail:\n{self.log_tail()}") from None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------------------

    def _start_with_retries(self, *, attempts: int) -> None:
        assert self._tmp is not None and self._binary is not None and self._plugin is not None
        storage = self._storage_dir if self._storage_dir is not None else self._tmp / "db"
        storage.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            self._port = _free_port()
            self.config = _deep_merge(
                base_config(http_port=self._port, storage_dir=storage.resolve(), plugin=self._plugin),
                self._extra_config,
            )
            # extra_config may pin the port; the URL must follow it.
            self._port = int(self.config["HttpPort"])
            self.config_path.write_text(json.dumps(self.config, indent=2), encoding="utf-8")
            self._spawn()
            try:
                self._wait_ready()
                return
            except _ExitedEarly:
                # Most likely the port was taken between _free_port() and Orthanc's bind.
                self._proc = None
                if attempt == attempts:
                    raise OrthancStartError(
                        f"Orthanc exited during start-up ({attempts} attempts); log tail:\n{self.log_tail()}"
                    ) from None

    def _spawn(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
        self._log_file = open(self.log_path, "ab")  # closed in stop()
        self._proc = subprocess.Popen(
            [str(self._binary), str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self._tmp,
        )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._proc.poll() is not None:
                    raise _ExitedEarly
                try:
                    if client.get(self.url + "/system").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise OrthancStartError(
                        f"Orthanc (pid {self._proc.pid}) did not answer GET {self.url}/system within "
                        f"{self._startup_timeout:.0f} s; log tail:\n{self.log_tail()}"
                    )
                time.sleep(0.05)


class _ExitedEarly(Exception):
    pass


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # SIGTERM to this PID only
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGKILL to this PID only
        proc.wait(timeout=10)


# -- STOW-RS ------------------------------------------------------------------------------------------


def encode_dataset(ds: Dataset) -> bytes:
    """Serialise a dataset as a DICOM Part 10 file (preamble, file meta), as STOW-RS expects."""
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _multipart(parts: Sequence[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"))
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(chunks), content_type


def _batches(datasets: Iterable[Dataset], size: int) -> Iterator[list[Dataset]]:
    batch: list[Dataset] = []
    for ds in datasets:
        batch.append(ds)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _sequence_items(answer: Mapping[str, Any], tag: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = answer.get(tag, {}).get("Value", [])
    return items


def _post_batch(client: httpx.Client, url: str, batch: Sequence[Dataset]) -> int:
    body, content_type = _multipart([encode_dataset(ds) for ds in batch])
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    try:
        response = client.post(url, content=body, headers=headers)
    except (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError):
        # Orthanc closes idle keep-alive connections after 1 s; a pooled socket can die under us.
        # STOW-RS is idempotent here (OverwriteInstances), so one retry on a fresh connection is safe.
        response = client.post(url, content=body, headers=headers)
    try:
        answer: dict[str, Any] = response.json()
    except ValueError:
        raise StowError(f"STOW-RS {url} answered {response.status_code}: {response.text[:300]}") from None
    # Orthanc always sends FailedSOPSequence (0008,1198); only items in it mean failure.
    failed = _sequence_items(answer, _FAILED_SOP_SEQUENCE)
    stored = len(_sequence_items(answer, _REFERENCED_SOP_SEQUENCE))
    if response.status_code != 200 or failed or stored != len(batch):
        reasons = [
            (
                item.get(_REFERENCED_SOP_INSTANCE_UID, {}).get("Value", ["?"])[0],
                item.get(_FAILURE_REASON, {}).get("Value", ["?"])[0],
            )
            for item in failed
        ]
        # An instance Orthanc cannot even identify (no SOPInstanceUID) is neither failed nor referenced:
        # the answer is a 400 with an empty FailedSOPSequence, so the referenced count is checked too.
        raise StowError(
            f"STOW-RS {url} answered {response.status_code}: sent {len(batch)}, stored {stored}, "
            f"failed {len(failed)} (SOPInstanceUID, FailureReason): {reasons[:5]}"
        )
    return stored


def store(
    dicomweb_url: str,
    datasets: Iterable[Dataset],
    batch: int = 50,
    *,
    workers: int = 1,
    timeout: float = 120.0,
) -> int:
    """Store datasets through STOW-RS (``POST {dicomweb_url}/studies``), ``batch`` instances per request.

    Raises :class:`StowError` on a non-200 answer, on any item in FailedSOPSequence (0008,1198), or when
    fewer instances come back in ReferencedSOPSequence than were sent. Returns the number stored.
    ``workers > 1`` keeps several requests in flight (useful for the benchmark's bulk load).
    """
    if batch < 1 or workers < 1:
        raise ValueError("batch and workers must be >= 1")
    url = dicomweb_url.rstrip("/") + "/studies"
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    with httpx.Client(timeout=timeout, limits=limits) as client:
        if workers == 1:
            return sum(_post_batch(client, url, chunk) for chunk in _batches(datasets, batch))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_post_batch, client, url, chunk) for chunk in _batches(datasets, batch)]
            return sum(future.result() for future in futures)
