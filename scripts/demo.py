"""The demo: a private Orthanc with generated sample data, the facade in front of it, example queries.

    python scripts/demo.py [--port N] [--check]

Starts Orthanc (Debian's orthanc + orthanc-dicomweb) on a free 127.0.0.1 port with a temporary storage
folder, loads the synthetic dataset the tests use, starts ``python -m app`` on 127.0.0.1 (port 8080, or the first
free one when 8080 is taken; ``--port N`` insists on N), prints the clinician's queries with their answers and
what to open, writes ``selection.json`` (a manifest to POST), and keeps both running until Ctrl-C. Progress goes
to stdout; the servers' own log lines go to files whose paths are printed. ``--check`` exits after the queries
(non-zero if one fails, and after POSTing selection.json), which the test suite uses to keep this demo working.
Any failure of its own processes ends the demo with a message and a non-zero status.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.fhir import patient_ids  # noqa: E402
from tests.support.dataset import build_dataset  # noqa: E402
from tests.support.facade import FacadeProcess, free_port, port_is_free  # noqa: E402
from tests.support.kos import FOR_CONFERENCE, FOR_TEACHING, make_kos  # noqa: E402
from tests.support.ohif import VERSION as OHIF_VERSION  # noqa: E402
from tests.support.ohif import app_config  # noqa: E402
from tests.support.orthanc import OrthancServer, store  # noqa: E402


def _examples(base: str, manifest: Any) -> list[tuple[str, str]]:
    mueller = next(s for s in manifest.studies if s.patient_id == "MRN0001")
    smith = next(s for s in manifest.studies if s.patient_id == "SHARED01" and s.issuer == "HOSP-A")
    pid = patient_ids.encode(mueller.patient_id, mueller.issuer)
    r5 = base.replace("/fhir/R4", "/fhir/R5")
    issuer_system = quote("urn:x-imaging-facade:issuer:HOSP-A", safe="")
    return [
        ("What the server can do", f"{base}/metadata"),
        (
            "All imaging of one patient, with the WADO-RS endpoint",
            f"{base}/ImagingStudy?patient=Patient/{pid}&_include=ImagingStudy:endpoint",
        ),
        (
            "The same patient by MRN, CT only, since 2018",
            f"{base}/ImagingStudy?patient.identifier=MRN0001&modality=CT&started=ge2018-01-01",
        ),
        (
            "Every study since 2018, 5 per page (follow the next link)",
            f"{base}/ImagingStudy?started=ge2018-01-01&_count=5",
        ),
        (
            "PatientID SHARED01 of issuer HOSP-A only (another issuer has a different patient with it)",
            f"{base}/ImagingStudy?patient.identifier={issuer_system}%7CSHARED01",
        ),
        (
            "Knee imaging (SNOMED body site) of any patient, 2 per page",
            f"{base}/ImagingStudy?bodysite=http://snomed.info/sct%7C72696002&_count=2",
        ),
        ("Patients named Muller (any accent, any case), born 1958", f"{base}/Patient?family=muller&birthdate=1958"),
        ("One study by its DICOM Study Instance UID", f"{base}/ImagingStudy/{smith.study_uid}"),
        (
            "FHIR R5: key images the radiologist marked for the tumour board (113005), with the WADO-RS endpoint",
            f"{r5}/ImagingSelection?patient=Patient/{pid}&code=113005&_include=ImagingSelection:endpoint",
        ),
        (
            "FHIR R5: every manifest of the patient (teaching, conference, ...)",
            f"{r5}/ImagingSelection?patient=Patient/{pid}",
        ),
        ("By accession number", f"{base}/ImagingStudy?identifier={smith.accession}"),
    ]


def _manifests(datasets: list[Any]) -> list[Any]:
    """Two key-image manifests (KOS) a radiologist made for Müller: tumour board, teaching."""
    images = [d for d in datasets if d.PatientID == "MRN0001" and "Rows" in d and d.get("StudyTime")]
    return [
        make_kos(images[:2], title=FOR_CONFERENCE, description="Tumour board: lesion in segment 7", seed=1),
        make_kos(images[2:3], title=FOR_TEACHING, description="Classic appearance", seed=2),
    ]


def _summary(body: dict[str, Any]) -> str:
    if (
        body.get("resourceType") == "Bundle"
        and body.get("entry", [{}])[0].get("resource", {}).get("resourceType") == "Patient"
    ):
        names = [e["resource"].get("name", [{}])[0].get("text", "?") for e in body["entry"]]
        return f"  {body.get('total')} patients: " + ", ".join(names)
    if body.get("resourceType") == "Bundle" and any(
        e["resource"]["resourceType"] == "ImagingSelection" for e in body.get("entry", [])
    ):
        lines = [f"  {body.get('total')} selections"]
        for e in body["entry"]:
            r = e["resource"]
            if r["resourceType"] == "ImagingSelection":
                purpose = r["code"].get("coding", [{}])[0].get("display") or r["code"].get("text")
                lines.append(f"  - {purpose}: {len(r.get('instance', []))} instances of series {r.get('seriesUid')}")
        return "\n".join(lines)
    if body.get("resourceType") == "Bundle":
        studies = [e["resource"] for e in body.get("entry", []) if e["resource"]["resourceType"] == "ImagingStudy"]
        lines = [
            f"  {len(studies)} studies"
            + (", next page: " + n[0] if (n := [x["url"] for x in body["link"] if x["relation"] == "next"]) else "")
        ]
        for s in studies:
            mods = ",".join(c["code"] for c in s.get("modality", []))
            lines.append(
                f"  - {s.get('started', '?'):26} {mods:6} {s['subject'].get('display', '')}: "
                f"{s.get('numberOfSeries')} series, {s.get('numberOfInstances')} instances"
            )
        return "\n".join(lines)
    if body.get("resourceType") == "ImagingStudy":
        return f"  {body.get('started')} {body.get('description', '')} ({len(body.get('series', []))} series)"
    return f"  {body.get('resourceType')}"


DCM = "http://dicom.nema.org/resources/ontology/DCM"


def _step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _port(asked: int | None) -> int | None:
    """The port asked for if it is free (None if not: the demo stops), else 8080 or the first free one."""
    if asked is not None:
        return asked if port_is_free(asked) else None
    return 8080 if port_is_free(8080) else free_port()


def _selection(datasets: list[Any], pid: str) -> dict[str, Any]:
    """A manifest body for POST /fhir/R5/ImagingSelection: two images of Müller's latest CT, for teaching."""
    images = [d for d in datasets if d.PatientID == "MRN0001" and d.Modality == "CT" and "Rows" in d]
    latest = max(images, key=lambda d: (d.get("StudyDate", ""), d.StudyInstanceUID)).SeriesInstanceUID
    chosen = [d for d in images if d.SeriesInstanceUID == latest][:2]
    return {
        "resourceType": "ImagingSelection",
        "status": "available",
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": DCM, "code": "113004", "display": "For Teaching"}]},
        "studyUid": chosen[0].StudyInstanceUID,
        "seriesUid": chosen[0].SeriesInstanceUID,
        "instance": [
            {"uid": d.SOPInstanceUID, "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{d.SOPClassUID}"}}
            for d in chosen
        ],
        "performer": [{"actor": {"display": "Dr Demo"}}],
    }


def _ohif(wado: str, study_uid: str, logs: Path) -> None:
    """A ready OHIF v3 configuration with the gateway as its DICOMweb data source (docs/gateway.md, "Viewing in
    OHIF")."""
    config = logs / "ohif-app-config.js"
    config.write_text(app_config(wado), encoding="utf-8")
    print(
        f"\n# View a study in OHIF {OHIF_VERSION} (its published build; the gateway is its DICOMweb data source):\n"
        f"npm pack @ohif/app@{OHIF_VERSION} && tar xzf ohif-app-{OHIF_VERSION}.tgz\n"
        f"cp {config} package/dist/app-config.js\n"
        "npx --yes serve@14 --single --listen 3000 package/dist\n"
        f"# then open http://localhost:3000/viewer?StudyInstanceUIDs={study_uid}\n"
        f"# ({config}:)\n{app_config(wado)}"
    )


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _tail(facade: FacadeProcess) -> str:
    return _log_tail(facade.log_path) if facade.log_path else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, help="facade port on 127.0.0.1 (default 8080, or the first free one)")
    parser.add_argument("--check", action="store_true", help="run the example queries, then stop")
    args = parser.parse_args(argv)
    port = _port(args.port)
    if port is None:
        print(f"demo: port {args.port} on 127.0.0.1 is in use; choose another with --port", file=sys.stderr)
        return 1
    logs = Path(tempfile.mkdtemp(prefix="facade-demo-"))
    facade_log = logs / "facade.log"

    _step("Starting a private Orthanc (Debian's orthanc + DICOMweb plugin) on 127.0.0.1 ...")
    with OrthancServer() as pacs:
        _step(f"Orthanc is up (pid {pacs.pid}) at {pacs.url}")
        datasets, manifest = build_dataset()
        kos = _manifests(datasets)
        _step(
            f"Loading {len(manifest.studies)} studies ({manifest.n_instances} instances, "
            f"{len(manifest.patients)} patients) and {len(kos)} key-image manifests ..."
        )
        store(pacs.dicomweb_url, [*datasets, *kos])
        _step(f"Starting the facade on 127.0.0.1:{port} (its log: {facade_log}) ...")
        try:
            facade = FacadeProcess(
                # CORS for any origin: a viewer served elsewhere (OHIF, docs/gateway.md "Viewing in OHIF") calls the
                # gateway.
                pacs.dicomweb_url,
                port=port,
                log=facade_log,
                env={"FACADE_LOG_FORMAT": "text", "FACADE_CORS_ORIGINS": "*"},
            ).__enter__()
        except RuntimeError as exc:
            print(f"demo: the facade did not start: {exc}\n{_log_tail(facade_log)}", file=sys.stderr)
            return 1
        try:
            return _run(facade, manifest, datasets, check=args.check, logs=logs)
        finally:
            facade.stop()


def _run(facade: FacadeProcess, manifest: Any, datasets: list[Any], *, check: bool, logs: Path) -> int:
    base = facade.base
    root = base.removesuffix("/fhir/R4")
    _step(f"Ready: the facade (pid {facade.pid}) answers at {base}\n")
    failed = 0
    for title, url in _examples(base, manifest):
        r = httpx.get(url, headers={"Accept": "application/fhir+json"}, timeout=30)
        failed += r.status_code != 200
        print(f"# {title}\ncurl -s '{url}'\n  -> HTTP {r.status_code}\n{_summary(r.json())}\n")
    mueller = next(s for s in manifest.studies if s.patient_id == "MRN0001")
    pid = patient_ids.encode(mueller.patient_id, mueller.issuer)
    wado = httpx.get(f"{base}/Endpoint/wado-rs", timeout=30).json()["address"]
    selection = Path.cwd() / "selection.json"
    selection.write_text(json.dumps(_selection(datasets, pid), indent=2) + "\n", encoding="utf-8")
    r5 = base.replace("/fhir/R4", "/fhir/R5")
    print(
        "# Download one study's images (WADO-RS, at the Endpoint's address: the facade's gateway, not the PACS):\n"
        f"curl -s -H 'Accept: multipart/related; type=\"application/dicom\"' "
        f"'{wado}/studies/{mueller.study_uid}' -o study.multipart"
    )
    if check:
        study = httpx.get(
            f"{wado}/studies/{mueller.study_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
            timeout=60,
        )
        print(f"  -> HTTP {study.status_code}, {len(study.content)} bytes (--check)")
        failed += study.status_code != 200 or b"DICM" not in study.content
    print()
    print(
        f"# Mark two images for teaching from the EMR (FHIR R5 create; a KOS is stored in the PACS):\n"
        f"curl -s -X POST '{r5}/ImagingSelection' -H 'Content-Type: application/fhir+json' -d @{selection}\n"
    )
    if check:
        created = httpx.post(
            f"{r5}/ImagingSelection",
            content=selection.read_bytes(),
            headers={"Content-Type": "application/fhir+json"},
            timeout=60,
        )
        print(f"  -> HTTP {created.status_code} (selection.json POSTed, --check)")
        failed += created.status_code != 201
    if not facade.alive:
        print(f"demo: the facade stopped unexpectedly; its log ({facade.log_path}):\n{_tail(facade)}", file=sys.stderr)
        return 1
    if failed:
        print(f"demo: {failed} example requests failed; the facade's log: {facade.log_path}", file=sys.stderr)
        return 1
    print(f"Open in a browser: {root}/   (FHIR R4 base {base}, R5 base {r5}; open mode, no token needed)\nLogs: {logs}")
    viewer = f"{root}/viewer?patient={pid}&open=first"
    if check:
        page = httpx.get(viewer, timeout=30)
        failed += page.status_code != 200
        print(f"Viewer: {viewer}  -> HTTP {page.status_code} (--check)")
    else:
        print(f"Viewer (a patient's studies and thumbnails): {viewer}")
    if failed:
        print(f"demo: the viewer page failed; the facade's log: {facade.log_path}", file=sys.stderr)
        return 1
    _ohif(wado, mueller.study_uid, logs)
    if check:
        return 0
    print("Both keep running; Ctrl-C stops them.", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        if not facade.alive:
            print(
                f"demo: the facade stopped unexpectedly; its log ({facade.log_path}):\n{_tail(facade)}", file=sys.stderr
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
