"""app.dicom.wado_rewrite: WADO-RS route validation and the rewriting of PACS URLs (BulkDataURI, Retrieve URL,
Content-Location) to the gateway's address, by path, on plain dicts shaped like Orthanc 1.10's answers."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from app.dicom.wado_rewrite import (
    WadoPath,
    drop_instances,
    is_bulk_path,
    is_uid,
    parse_frame_list,
    parse_wado_path,
    rendered_query,
    rewrite_dataset,
    rewrite_dicom_json,
    rewrite_part_headers,
    rewrite_uri,
)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROFILE = settings(max_examples=300, derandomize=True, database=None, deadline=None)

BASE = "https://imaging.example.org/dicomweb/c/AbC-_123"
ST, SE, SOP = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"
INSTANCE = f"studies/{ST}/series/{SE}/instances/{SOP}"
PACS = "http://pacs.internal:8042/dicom-web"


# --- route pieces ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"studies/{ST}", WadoPath(ST)),
        (f"studies/{ST}/metadata", WadoPath(ST, resource="metadata")),
        (f"studies/{ST}/rendered", WadoPath(ST, resource="rendered")),
        (f"studies/{ST}/series", WadoPath(ST, resource="series")),
        (f"studies/{ST}/series/{SE}", WadoPath(ST, SE)),
        (f"studies/{ST}/series/{SE}/metadata", WadoPath(ST, SE, resource="metadata")),
        (f"studies/{ST}/series/{SE}/rendered", WadoPath(ST, SE, resource="rendered")),
        (f"studies/{ST}/series/{SE}/instances", WadoPath(ST, SE, resource="instances")),
        (f"studies/{ST}/instances", WadoPath(ST, resource="instances")),  # QIDO-RS in the study (issue 20)
        (f"studies/{ST}/thumbnail", WadoPath(ST, resource="thumbnail")),
        (f"studies/{ST}/series/{SE}/instances/{SOP}/thumbnail", WadoPath(ST, SE, SOP, "thumbnail")),
        (INSTANCE, WadoPath(ST, SE, SOP)),
        (f"{INSTANCE}/metadata", WadoPath(ST, SE, SOP, "metadata")),
        (f"{INSTANCE}/rendered", WadoPath(ST, SE, SOP, "rendered")),
        (f"{INSTANCE}/frames/1,3,2", WadoPath(ST, SE, SOP, "frames", frames=(1, 3, 2))),
        (f"{INSTANCE}/frames/7/rendered", WadoPath(ST, SE, SOP, "frames", frames=(7,), rendered=True)),
        (f"{INSTANCE}/bulk/7fe00010", WadoPath(ST, SE, SOP, "bulk", bulk="7fe00010")),
        (f"{INSTANCE}/bulk/00540016/0/00181074", WadoPath(ST, SE, SOP, "bulk", bulk="00540016/0/00181074")),
    ],
)
def test_routes(path: str, expected: WadoPath) -> None:
    got = parse_wado_path(path)
    assert got == expected
    assert got.path == path  # canonical = what was asked, for every valid route


@pytest.mark.parametrize(
    "path",
    [
        "",
        "studies",
        f"/studies/{ST}",
        f"studies/{ST}/",
        f"studies/{ST}//series/{SE}",
        f"studies/{ST}/../{ST}",
        "studies/1.02.3",  # leading zero
        "studies/" + "1." * 40 + "1",  # longer than 64
        "studies/1.2%2F3",
        f"studies/{ST}/frames/1",
        f"studies/{ST}/series/{SE}/bulk/7fe00010",
        f"studies/{ST}/series/{SE}/series",
        f"studies/{ST}/metadata/x",
        f"{INSTANCE}/frames",
        f"{INSTANCE}/frames/0",
        f"{INSTANCE}/frames/1,,2",
        f"{INSTANCE}/frames/-1",
        f"{INSTANCE}/frames/ 1",
        f"{INSTANCE}/frames/1/rendered/x",
        f"{INSTANCE}/frames/1/metadata",
        f"{INSTANCE}/bulk",
        f"{INSTANCE}/bulk/7fe0001",
        f"{INSTANCE}/bulk/7fe00010/",
        f"{INSTANCE}/bulk/00540016/x/00181074",
        f"{INSTANCE}/bulk/../../../instances/1.2",
        f"studies/{ST}/series/{SE}/instances/{SOP}x",
    ],
)
def test_not_routes(path: str) -> None:
    assert parse_wado_path(path) is None


def test_templates_carry_no_uids() -> None:
    assert parse_wado_path(f"{INSTANCE}/frames/1,2/rendered").template == (  # type: ignore[union-attr]
        "studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered"
    )
    assert parse_wado_path(f"{INSTANCE}/bulk/7fe00010").template.endswith("/bulk/{path}")  # type: ignore[union-attr]
    assert parse_wado_path(f"studies/{ST}/series").template == "studies/{study}/series"  # type: ignore[union-attr]
    assert parse_wado_path(f"studies/{ST}").level == "study"  # type: ignore[union-attr]
    assert parse_wado_path(INSTANCE).level == "instance"  # type: ignore[union-attr]


def test_pieces() -> None:
    assert is_uid("1.2.840.10008.1.2.1") and not is_uid("1") and not is_uid("1.2.") and not is_uid("1..2")
    assert parse_frame_list("1") == (1,) and parse_frame_list("2,1,2") == (2, 1, 2)
    assert parse_frame_list("") is None and parse_frame_list("01") is None and parse_frame_list("1e3") is None
    assert parse_frame_list(",".join(["1"] * 10_001)) is None
    assert parse_frame_list("1234567890") is None  # > 9 digits
    assert is_bulk_path("7FE00010") and is_bulk_path("00540016/12/00181074/0/00100010")
    assert not is_bulk_path("7fe00010/0") and not is_bulk_path("7fe0-0010") and not is_bulk_path("")


# --- rewrite_uri ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        f"{PACS}/{INSTANCE}/bulk/7fe00010",  # Orthanc with DicomWeb.Host
        f"http://127.0.0.1/dicom-web/{INSTANCE}/bulk/7fe00010",  # Host header without the port (dicomweb-client)
        f'https://"fhir.example.org"/dicom-web/{INSTANCE}/bulk/7fe00010',  # Forwarded: host="x", quotes kept
        f"http://orthanc:secret@pacs.internal:8042/dicom-web/{INSTANCE}/bulk/7fe00010",  # credentials in the URL
        f"HTTPS://[::1]:8042/pacs/dicom-web/{INSTANCE}/bulk/7fe00010?token=pacs-secret#frag",
        f"//pacs.internal/dicom-web/{INSTANCE}/bulk/7fe00010",
        f"/dicom-web/{INSTANCE}/bulk/7fe00010",
        f"{INSTANCE}/bulk/7fe00010",
        f"http://pacs/studies/archive/studies/{INSTANCE}/bulk/7fe00010",  # a root containing "studies"
        f"http://pacs/studies/1.2.3/dicom-web/{INSTANCE}/bulk/7fe00010",  # ... even before a UID: the last wins
    ],
)
def test_rewrite_uri_by_path(uri: str) -> None:
    assert rewrite_uri(uri, BASE) == f"{BASE}/{INSTANCE}/bulk/7fe00010"
    assert rewrite_uri(uri, BASE + "/") == f"{BASE}/{INSTANCE}/bulk/7fe00010"


def test_rewrite_uri_levels() -> None:
    assert rewrite_uri(f"{PACS}/studies/{ST}", BASE) == f"{BASE}/studies/{ST}"
    assert rewrite_uri(f"{PACS}/studies/{ST}/series/{SE}", BASE) == f"{BASE}/studies/{ST}/series/{SE}"
    assert rewrite_uri(f"{PACS}/{INSTANCE}/frames/3", BASE) == f"{BASE}/{INSTANCE}/frames/3"


@pytest.mark.parametrize(
    "uri",
    [
        None,
        42,
        "",
        "http://pacs.internal:8042/dicom-web/",
        "http://pacs.internal:8042/dicom-web/studies",
        "http://pacs.internal:8042/dicom-web/studies/not-a-uid",
        f"http://pacs.internal/dicom-web/studies/{ST}/whatever",
        f"http://pacs.internal/dicom-web/studies/{ST}/series/{SE}/../../../studies/1.2",
        f"http://pacs.internal/dicom-web/studies/{ST}%2Fseries%2F{SE}",
        f"ftp://pacs.internal/dicom-web/studies/{ST}",
        f"file:///dicom-web/studies/{ST}",
        f"javascript:/studies/{ST}",
        f"http://[::1/dicom-web/studies/{ST}",  # unbalanced bracket: urlsplit raises
        f"{PACS}/studies/{ST}/" + "x" * 5000,
        f"urn:oid:{ST}",
        f"http://pacs.internal/wado?requestType=WADO&studyUID={ST}",  # WADO-URI: not placeable
    ],
)
def test_rewrite_uri_drops_what_it_cannot_place(uri: object) -> None:
    assert rewrite_uri(uri, BASE) is None


# --- DICOM JSON -------------------------------------------------------------------------------------------------


def orthanc_metadata() -> list[dict[str, Any]]:
    """Instance metadata as Orthanc's Full mode writes it (BulkDataURI for PixelData and private OB, a nested
    sequence with a bulk element two levels down)."""
    bulk = f"{PACS}/{INSTANCE}/bulk"
    return [
        {
            "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
            "00080018": {"vr": "UI", "Value": [SOP]},
            "00081190": {"vr": "UR", "Value": [f"{PACS}/{INSTANCE}"]},
            "00091010": {"vr": "OB", "BulkDataURI": f"{bulk}/00091010"},
            "00540016": {
                "vr": "SQ",
                "Value": [
                    {
                        "00181072": {"vr": "TM", "Value": ["120000"]},
                        "00540300": {
                            "vr": "SQ",
                            "Value": [
                                {"00181074": {"vr": "OB", "BulkDataURI": f"{bulk}/00540016/0/00540300/0/00181074"}}
                            ],
                        },
                    },
                    {},
                ],
            },
            "00282000": {"vr": "OB", "InlineBinary": "AAEC"},
            "00080104": {"vr": "UR", "Value": ["http://snomed.info/sct"]},  # another UR: not a PACS URL, kept
            "7FE00010": {"vr": "OB", "BulkDataURI": f"{bulk}/7fe00010"},
        }
    ]


def test_rewrite_dicom_json_everywhere_and_nothing_else() -> None:
    original = orthanc_metadata()
    kept = copy.deepcopy(original)
    out = rewrite_dicom_json(original, BASE)
    assert original == kept  # not modified
    ds = out[0]
    assert ds["7FE00010"] == {"vr": "OB", "BulkDataURI": f"{BASE}/{INSTANCE}/bulk/7fe00010"}
    assert ds["00091010"]["BulkDataURI"] == f"{BASE}/{INSTANCE}/bulk/00091010"
    inner = ds["00540016"]["Value"][0]["00540300"]["Value"][0]["00181074"]
    assert inner["BulkDataURI"] == f"{BASE}/{INSTANCE}/bulk/00540016/0/00540300/0/00181074"
    assert ds["00540016"]["Value"][1] == {}
    assert ds["00081190"]["Value"] == [f"{BASE}/{INSTANCE}"]
    assert ds["00282000"] == kept[0]["00282000"] and ds["00080104"] == kept[0]["00080104"]
    assert "pacs.internal" not in json.dumps(out)


def test_qido_rows_retrieve_url_lower_case_keys_and_retrieve_uri() -> None:
    rows = [
        {
            "0020000e": {"vr": "UI", "Value": [SE]},
            "00081190": {"vr": "UR", "Value": [f"{PACS}/studies/{ST}/series/{SE}"]},
        },
        {"0040e010": {"vr": "UR", "Value": [f"{PACS}/studies/{ST}"]}},
        "not an object",
    ]
    out = rewrite_dicom_json(rows, BASE)  # type: ignore[arg-type]
    assert out[0]["00081190"]["Value"] == [f"{BASE}/studies/{ST}/series/{SE}"]
    assert out[1]["0040e010"]["Value"] == [f"{BASE}/studies/{ST}"]
    assert len(out) == 2


def test_unplaceable_urls_drop_the_attribute() -> None:
    ds = {
        "00081190": {"vr": "UR", "Value": ["http://elsewhere.example/some/path"]},
        "0040E010": {"vr": "UR", "Value": "not a list"},
        "7FE00010": {"vr": "OB", "BulkDataURI": "http://pacs.internal/other/7fe00010"},
        "00091011": {"vr": "OB", "BulkDataURI": None},
        "00540016": {
            "vr": "SQ",
            "Value": [{"00181074": {"vr": "OB", "BulkDataURI": "urn:x"}, "00100010": {"vr": "PN"}}],
        },
        "00100020": {"vr": "LO", "Value": ["MRN1"]},
        "00081195": "odd shape, kept",
        "0008119A": {"vr": "UR"},
    }
    out = rewrite_dataset(ds, BASE)
    assert out == {
        "00540016": {"vr": "SQ", "Value": [{"00100010": {"vr": "PN"}}]},
        "00100020": {"vr": "LO", "Value": ["MRN1"]},
        "00081195": "odd shape, kept",
        "0008119A": {"vr": "UR"},
    }
    assert rewrite_dataset({"00081190": {"vr": "UR"}}, BASE) == {"00081190": {"vr": "UR"}}  # empty: nothing to place


def test_sequence_with_a_bulk_uri_instead_of_items() -> None:
    # Orthanc 1.9.4+ may force a BulkDataURI on sequences.
    ds = {"00540016": {"vr": "SQ", "BulkDataURI": f"{PACS}/{INSTANCE}/bulk/00540016"}}
    assert rewrite_dataset(ds, BASE)["00540016"]["BulkDataURI"] == f"{BASE}/{INSTANCE}/bulk/00540016"


def test_drop_instances() -> None:
    rows = [
        {"00080018": {"vr": "UI", "Value": ["1.2.3"]}},
        {"00080018": {"vr": "UI", "Value": ["1.2.4"]}},
        {"00080018": {"vr": "UI", "Value": ["1.2.5"]}},
        {"00080018": {"vr": "UI", "Value": ["1.2.5"]}},
        {"00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}},  # no SOP UID: kept
    ]
    assert drop_instances(rows, frozenset({"1.2.4", "1.2.5"})) == [rows[0], rows[4]]
    assert drop_instances(rows, ()) == rows
    assert drop_instances([{"00080018": {"vr": "UI", "Value": ["1.2.4"]}}], {"1.2.4"}) == []


def test_rewrite_part_headers() -> None:
    headers = [
        ("Content-Type", "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"),
        ("Content-Length", "524288"),
        ("MIME-Version", "1.0"),
        ("Content-Location", f"http://127.0.0.1:8042/dicom-web/{INSTANCE}/frames/1"),
        ("X-Orthanc-Host", "pacs.internal"),
    ]
    assert rewrite_part_headers(headers, BASE) == [
        headers[0],
        headers[1],
        headers[2],
        ("Content-Location", f"{BASE}/{INSTANCE}/frames/1"),
    ]
    assert rewrite_part_headers([("content-location", "http://pacs/elsewhere")], BASE) == []


# --- hypothesis: no PACS URL survives ------------------------------------------------------------------------

_TAG = st.from_regex(r"[0-9A-Fa-f]{8}", fullmatch=True)
_PACS_URL = st.one_of(
    st.builds(lambda t: f"{PACS}/{INSTANCE}/bulk/{t}", _TAG),
    st.just(f"{PACS}/studies/{ST}/series/{SE}"),
    st.just("http://pacs.internal:8042/dicom-web/not/placeable"),
    st.builds(lambda s: f"http://pacs.internal/{s}", st.text(max_size=20)),
)
_LEAF = st.one_of(
    st.builds(lambda u: {"vr": "OB", "BulkDataURI": u}, _PACS_URL),
    st.builds(lambda u: {"vr": "LO", "Value": [u]}, st.text(alphabet="abc", max_size=5)),
)


def _datasets(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    element = st.one_of(_LEAF, st.builds(lambda items: {"vr": "SQ", "Value": items}, st.lists(children, max_size=3)))
    url = st.builds(lambda u: {"vr": "UR", "Value": [u]}, _PACS_URL)
    return st.one_of(st.dictionaries(_TAG, element, max_size=4), st.builds(lambda u: {"00081190": u}, url))


_DATASETS = st.recursive(st.dictionaries(_TAG, _LEAF, max_size=3), _datasets, max_leaves=20)


@PROFILE
@given(st.lists(_DATASETS, max_size=4))
def test_no_pacs_url_survives(datasets: list[dict[str, Any]]) -> None:
    out = rewrite_dicom_json(datasets, BASE)
    assert "pacs.internal" not in json.dumps(out)
    # and every URL left is a gateway URL that parses back to a route
    for text in json.dumps(out).split('"'):
        if text.startswith("https://"):
            assert text.startswith(BASE + "/studies/") and parse_wado_path(text[len(BASE) + 1 :]) is not None


@pytest.mark.parametrize(
    ("items", "thumbnail", "query"),
    [
        ([], False, ""),
        ([], True, "viewport=128,128"),
        ([("viewport", "256,256")], True, "viewport=256,256"),  # OHIF's viewport=256%2C256, decoded
        ([("viewport", "64,64,0,0,-8,8.5")], False, "viewport=64,64,0,0,-8,8.5"),
        ([("window", "40,400,linear"), ("quality", "90")], False, "quality=90&window=40,400,linear"),
        ([("quality", "101")], False, None),
        ([("quality", "90")], True, None),  # a thumbnail takes the viewport only
        ([("viewport", "256")], False, None),
        ([("viewport", "0,256")], False, None),
        ([("viewport", "256,256&x=1")], False, None),
        ([("viewport", "1,1"), ("viewport", "2,2")], False, None),
        ([("window", "40,400,gamma")], False, None),
        ([("annotation", "patient")], False, None),
        ([("accept", "image/jpeg")], True, "viewport=128,128"),  # OHIF: stands for the Accept header
        ([("accept", "image/png"), ("quality", "50")], False, "quality=50"),
    ],
)
def test_rendered_query_is_rebuilt(items, thumbnail, query):
    assert rendered_query(items, thumbnail=thumbnail) == query
