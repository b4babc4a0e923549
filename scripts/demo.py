"""The demo: a private Orthanc with generated sample data, the facade in front of it, example queries.

    python scripts/demo.py [--port 8080] [--check]

Starts Orthanc (Debian's orthanc + orthanc-dicomweb) on a free 127.0.0.1 port with a temporary storage
folder, loads the synthetic dataset the tests use, starts ``python -m app`` on 127.0.0.1:PORT, prints the
clinician's queries with their answers, and keeps both running until Ctrl-C. ``--check`` exits after the
queries (non-zero if one fails), which the test suite uses to keep this demo working.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import patient_ids  # noqa: E402
from tests.support.dataset import build_dataset  # noqa: E402
from tests.support.facade import FacadeProcess  # noqa: E402
from tests.support.kos import FOR_CONFERENCE, FOR_TEACHING, make_kos  # noqa: E402
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080, help="facade port on 127.0.0.1 (default 8080)")
    parser.add_argument("--check", action="store_true", help="run the example queries, then stop")
    args = parser.parse_args(argv)

    with OrthancServer() as pacs:
        datasets, manifest = build_dataset()
        store(pacs.dicomweb_url, [*datasets, *_manifests(datasets)])
        print(
            f"Orthanc (pid {pacs.pid}) at {pacs.url}: {len(manifest.studies)} studies, "
            f"{manifest.n_instances} instances of {len(manifest.patients)} patients"
        )
        with FacadeProcess(pacs.dicomweb_url, port=args.port) as facade:
            base = facade.base
            print(f"Facade (pid {facade.pid}) at {base}\n")
            failed = 0
            for title, url in _examples(base, manifest):
                r = httpx.get(url, headers={"Accept": "application/fhir+json"}, timeout=30)
                failed += r.status_code != 200
                print(f"# {title}\ncurl -s '{url}'\n  -> HTTP {r.status_code}\n{_summary(r.json())}\n")
            print(
                "# Mark a new set for teaching from the EMR (FHIR R5 create; a KOS is stored in the PACS):\n"
                f"curl -s -X POST '{base.replace('/fhir/R4', '/fhir/R5')}/ImagingSelection' "
                "-H 'Content-Type: application/fhir+json' -d @selection.json   # see README\n"
            )
            if args.check:
                return 1 if failed else 0
            print("Both keep running; Ctrl-C stops them.")
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            while not stop.wait(1):
                pass
            return 0


if __name__ == "__main__":
    sys.exit(main())
