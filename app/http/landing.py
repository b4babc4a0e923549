"""``GET /``: a short HTML page for a person who opens the service in a browser (pure).

It names what the service is, its FHIR bases, the machine endpoints and a few example searches as links. Nothing
on it comes from the PACS, so it needs no token and shows no patient data. Every link is relative (no Host header
reaches a link), and the one absolute URL shown, the FHIR base, is escaped.
"""

from __future__ import annotations

from html import escape

from .. import __version__

# (title, path) relative to the site root; searches a clinician's EMR would send, without patient ids.
EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "Five imaging studies, with their WADO-RS endpoint",
        "/fhir/R4/ImagingStudy?_count=5&_include=ImagingStudy:endpoint",
    ),
    ("CT studies since 2018", "/fhir/R4/ImagingStudy?modality=CT&started=ge2018-01-01&_count=5"),
    ("Patients with imaging", "/fhir/R4/Patient?_count=10"),
    ("How many studies there are", "/fhir/R4/ImagingStudy?_summary=count"),
    ("Key-image manifests (FHIR R5 ImagingSelection)", "/fhir/R5/ImagingSelection?_count=5"),
)

# The page has no script and loads nothing: the strictest policy that still allows its inline style.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def landing_page(root: str, *, auth_mode: str, versions: tuple[str, ...]) -> str:
    """``root``: the site root clients see (public_url, else the request's scheme, host and port)."""
    bases = "".join(
        f'<li><code>{escape(root)}/fhir/{v}</code> — <a href="/fhir/{v}/metadata">CapabilityStatement</a></li>'
        for v in versions
    )
    examples = "".join(
        f'<li><a href="{escape(path)}">{escape(title)}</a> <code>{escape(path)}</code></li>' for title, path in EXAMPLES
    )
    if auth_mode == "smart":
        access = (
            "<p>Searches and reads need a SMART on FHIR bearer token (<code>Authorization: Bearer …</code>); "
            'the authorization server is named in <a href="/fhir/R4/.well-known/smart-configuration">'
            ".well-known/smart-configuration</a>. In a browser without a token the links below answer 401.</p>"
        )
    else:
        access = "<p><strong>Open mode:</strong> every request is served without authorization (a demo only).</p>"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Imaging FHIR facade</title>
<style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}
code{{background:#f3f3f3;padding:0 .2rem}}li{{margin:.2rem 0}}</style>
</head>
<body>
<h1>Imaging FHIR facade</h1>
<p>A FHIR server in front of a PACS: it answers FHIR searches for a patient's imaging
(<code>ImagingStudy</code>, <code>Patient</code>, key-image manifests as <code>ImagingSelection</code>) from the
PACS's DICOMweb QIDO-RS, and each study points at a DICOMweb WADO-RS <code>Endpoint</code> from which a viewer
downloads the images. It keeps no data of its own.</p>
{access}
<h2>FHIR bases</h2>
<ul>{bases}</ul>
<h2>Example searches</h2>
<ul>{examples}</ul>
<h2>Viewer</h2>
<p><a href="/viewer">/viewer</a> — a patient's studies and a thumbnail per series, through the FHIR API and the
WADO-RS gateway (the demo's viewer; with a token in smart mode)</p>
<h2>Operations</h2>
<ul>
<li><a href="/healthz">/healthz</a> — the process is alive</li>
<li><a href="/readyz">/readyz</a> — the PACS answers</li>
<li><a href="/metrics">/metrics</a> — Prometheus metrics</li>
</ul>
<p><small>imaging-fhir-facade {escape(__version__)}</small></p>
</body>
</html>
"""
