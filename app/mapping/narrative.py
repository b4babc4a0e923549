"""Generated narratives (R4 Narrative, status "generated"): a short readable summary for EMRs that show text.

Built from the FHIR resource itself, so the text never says more than the structured data. All values are
escaped; the div is XHTML in the namespace R4 requires (narrative.html#xhtml).
"""

from __future__ import annotations

from html import escape
from typing import Any

XHTML = "http://www.w3.org/1999/xhtml"


def _div(body: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{body}</div>'}


def _code(coding: dict[str, Any] | None) -> str:
    if not coding:
        return ""
    return escape(str(coding.get("display") or coding.get("code") or ""))


def imaging_study_text(study: dict[str, Any]) -> dict[str, str]:
    modalities = ", ".join(_code(c) for c in study.get("modality", []))
    head = " · ".join(
        part
        for part in (
            escape(study.get("started", "date unknown")),
            modalities,
            escape(study.get("description", "")),
        )
        if part
    )
    subject = study.get("subject", {})
    who = escape(subject.get("display", "")) + (
        f" ({escape(subject['identifier']['value'])})" if "identifier" in subject else ""
    )
    lines = [f"<p><b>Imaging study</b> {head}</p>"]
    if who.strip():
        lines.append(f"<p>Patient: {who}</p>")
    if "referrer" in study:
        lines.append(f"<p>Referred by: {escape(study['referrer'].get('display', ''))}</p>")
    counts = f"{study.get('numberOfSeries', '?')} series, {study.get('numberOfInstances', '?')} instances"
    lines.append(f"<p>{counts}</p>")
    series = study.get("series", [])
    if series:
        rows = "".join(
            "<tr>"
            f"<td>{escape(str(s.get('number', '')))}</td>"
            f"<td>{_code(s.get('modality'))}</td>"
            f"<td>{escape(s.get('description', ''))}</td>"
            f"<td>{_code(s.get('bodySite'))}{' (' + _code(s['laterality']) + ')' if 'laterality' in s else ''}</td>"
            f"<td>{escape(str(s.get('numberOfInstances', '')))}</td>"
            "</tr>"
            for s in series
        )
        lines.append(
            "<table><tr><th>#</th><th>Modality</th><th>Description</th><th>Body site</th><th>Instances</th></tr>"
            f"{rows}</table>"
        )
    return _div("".join(lines))


def patient_text(patient: dict[str, Any]) -> dict[str, str]:
    names = "; ".join(escape(n.get("text", "")) for n in patient.get("name", []) if n.get("text")) or "Unnamed"
    details = [
        escape(patient["gender"]) if "gender" in patient else "",
        f"born {escape(patient['birthDate'])}" if "birthDate" in patient else "",
    ]
    ids = ", ".join(
        escape(i["value"]) + (f" ({escape(i['assigner']['display'])})" if "assigner" in i else "")
        for i in patient.get("identifier", [])
    )
    body = f"<p><b>{names}</b>" + "".join(f", {d}" for d in details if d) + "</p>"
    if ids:
        body += f"<p>Patient ID: {ids}</p>"
    return _div(body)
