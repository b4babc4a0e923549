"""``GET /viewer``: the demo's small viewer — a patient's studies, then a rendered thumbnail per series.

It is a FHIR and DICOMweb client like any EMR's viewer, with nothing of its own: the page searches
``ImagingStudy?patient=…&_include=ImagingStudy:endpoint`` (following every ``next`` link, so no study is left
out), takes the WADO-RS base from each study's Endpoint (the shared one, or the contained one that carries a
capability, SMART Imaging Access), and asks ``…/instances/{uid}/rendered`` (PS3.18 §9.5) of the first instance
of each image series (``Accept: image/jpeg`` alone: the gateway narrows a list, but a PACS reached directly in
``direct`` mode may refuse one, as Orthanc 1.10 does with 400). The FHIR search's bearer token goes along only where
the Endpoint's ``requires-access-token`` extension is true (SMART Imaging Access: a capability address is followed
without it, and a PACS in ``direct`` mode that does not check tokens never sees one).

The token is typed into the page, or handed over in the URL fragment (``#access_token=…``, as OAuth 2.0 returns
one to a browser app, RFC 6749 §4.2.2: never sent to a server) and then removed from the address bar. It is never
stored, never put in a query string, and sent only as ``Authorization: Bearer``.

The script is a separate same-origin file so the Content-Security-Policy can forbid every inline script; the page
may connect only to the FHIR base's origin and the Endpoint's (``direct`` WADO mode: the PACS's public WADO-RS
base), and shows images only from the blobs the script fetched. Data reaches the DOM through ``textContent`` only.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .fhir_http import fhir_base

SCRIPT = (Path(__file__).with_name("viewer.js")).read_text(encoding="utf-8")

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Imaging viewer (demo)</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem;line-height:1.4}}
table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:left}}
#error{{color:#a00}}figure{{display:inline-block;margin:.4rem;text-align:center}}
img{{width:128px;height:128px;object-fit:contain;background:#000}}label{{margin-right:1rem}}</style>
<script src="{script}" defer></script>
</head>
<body data-fhir="{fhir}">
<h1>Imaging viewer <small>(demo)</small></h1>
<form id="search">
<label>Patient (FHIR id) <input id="patient" name="patient" required size="40"></label>
<label>Access token <input id="token" type="password" autocomplete="off" size="30"></label>
<label>Studies per page <input id="count" type="number" min="1" max="100" value="20"></label>
<button type="submit">Find studies</button>
</form>
<p id="status" role="status"></p>
<p id="error" role="alert"></p>
<table id="studies" hidden><thead><tr><th>Started</th><th>Modality</th><th>Description</th><th>Series</th>
<th>Instances</th><th></th></tr></thead><tbody></tbody></table>
<section id="images"></section>
</body>
</html>
"""


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def headers(connect: list[str]) -> dict[str, str]:
    """``connect``: the origins the page's fetches go to (the FHIR base's, the Endpoint's)."""
    sources = " ".join(["'self'", *dict.fromkeys(_origin(u) for u in connect)])
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'self'; connect-src {sources}; img-src blob:; "
            "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def page(fhir: str, script: str) -> str:
    """``fhir``: the absolute R4 base the page searches; ``script``: the path of :data:`SCRIPT`."""
    return PAGE.format(fhir=escape(fhir), script=escape(script))


async def viewer(request: Request) -> Response:
    settings = request.app.state.facade.settings
    fhir = fhir_base(request, settings.public_url, "R4")
    connect = [fhir] + ([settings.wado_base] if settings.wado_mode == "direct" else [])
    return HTMLResponse(page(fhir, "/viewer.js"), headers=headers(connect))


async def viewer_script(request: Request) -> Response:
    return Response(
        SCRIPT,
        media_type="text/javascript; charset=utf-8",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
    )
