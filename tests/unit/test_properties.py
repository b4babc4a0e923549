"""Property tests (hypothesis) for the pure core: the QIDO date range is a superset of the exact FHIR check,
match_pattern never narrows, and Patient ids round-trip.

Skipped when hypothesis is not installed. Examples are derandomized (a fixed seed per test) and no example
database is written, so a run is reproducible and leaves nothing behind.
"""

from __future__ import annotations

import re
import string
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from app.dicom.qido import QidoQuery, match_pattern  # noqa: E402
from app.fhir import patient_ids  # noqa: E402
from app.fhir.dates import dicom_interval, parse_search_date, qido_date_range  # noqa: E402
from tests.unit.helpers import inside  # noqa: E402

PROFILE = settings(max_examples=400, derandomize=True, database=None, deadline=None)

# PACS zones whose offset differs from every DICOM offset (-12:00..+14:00) by at most 24 h: the premise of
# the ±1 day widening. (Zones beyond it are a known edge: see test_fhir_dates.)
PACS_ZONES = [
    None,
    UTC,
    ZoneInfo("Europe/Berlin"),
    ZoneInfo("America/New_York"),
    ZoneInfo("Asia/Kolkata"),
    ZoneInfo("Australia/Lord_Howe"),
    ZoneInfo("America/St_Johns"),
]
PREFIXES = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]
# Text as it reaches us: decoded UTF-8 (query strings, DICOM JSON), so no lone surrogates.
TEXT = st.characters(codec="utf-8")
NO_NUL = st.characters(codec="utf-8", exclude_characters="\x00")  # NUL is not in DICOM LO
ISSUERS = st.one_of(st.none(), st.text(TEXT, min_size=1, max_size=10))

days = st.dates(date(2019, 12, 1), date(2021, 2, 1))
offsets = st.integers(-12 * 4, 14 * 4).map(lambda q: f"{'-' if q < 0 else '+'}{abs(q) // 4:02d}{abs(q) % 4 * 15:02d}")
times = st.one_of(
    st.none(),
    st.builds(lambda h: f"{h:02d}", st.integers(0, 23)),
    st.builds(lambda h, m: f"{h:02d}{m:02d}", st.integers(0, 23), st.integers(0, 59)),
    st.builds(lambda h, m, s: f"{h:02d}{m:02d}{s:02d}", st.integers(0, 23), st.integers(0, 59), st.integers(0, 59)),
    st.builds(
        lambda h, m, s, f: f"{h:02d}{m:02d}{s:02d}.{f}",
        st.integers(0, 23),
        st.integers(0, 59),
        st.integers(0, 59),
        st.text("0123456789", min_size=1, max_size=6),
    ),
)
search_zones = st.sampled_from(["", "Z", "+01:00", "-05:00", "+14:00", "-12:00", "+05:30"])
search_values = st.one_of(
    days.map(lambda d: f"{d.year}"),
    days.map(lambda d: f"{d:%Y-%m}"),
    days.map(lambda d: f"{d:%Y-%m-%d}"),
    st.builds(
        lambda d, h, m, z: f"{d:%Y-%m-%d}T{h:02d}:{m:02d}{z}",
        days,
        st.integers(0, 23),
        st.integers(0, 59),
        search_zones,
    ),
    st.builds(
        lambda d, h, m, s, z: f"{d:%Y-%m-%d}T{h:02d}:{m:02d}:{s:02d}{z}",
        days,
        st.integers(0, 23),
        st.integers(0, 59),
        st.integers(0, 59),
        search_zones,
    ),
)
criteria = st.tuples(st.sampled_from(PREFIXES), search_values)
studies = st.tuples(days, times, st.one_of(st.none(), offsets))


@PROFILE
@given(zone=st.sampled_from(PACS_ZONES), criterion=criteria, study=studies)
def test_qido_date_range_is_a_superset_of_one_criterion(zone, criterion, study):
    c = parse_search_date(criterion[0] + criterion[1], zone or UTC)
    da, tm, offset = study
    interval, _ = dicom_interval(f"{da:%Y%m%d}", tm, offset, zone)
    assert interval is not None
    rng = qido_date_range([[c]])
    assert rng is None or re.fullmatch(r"\d{8}-\d{8}|\d{8}-|-\d{8}|EMPTY", rng)
    if c.matches(interval):
        assert inside(f"{da:%Y%m%d}", rng), rng


@PROFILE
@given(
    zone=st.sampled_from(PACS_ZONES),
    groups=st.lists(st.lists(criteria, min_size=1, max_size=3), min_size=1, max_size=3),
    study=studies,
)
def test_qido_date_range_is_a_superset_of_and_of_or_groups(zone, groups, study):
    parsed = [[parse_search_date(p + v, zone or UTC) for p, v in g] for g in groups]
    da, tm, offset = study
    interval, _ = dicom_interval(f"{da:%Y%m%d}", tm, offset, zone)
    assert interval is not None
    if all(any(c.matches(interval) for c in g) for g in parsed):
        assert inside(f"{da:%Y%m%d}", qido_date_range(parsed))


@PROFILE
@given(criterion=criteria, study=studies)
def test_dicom_text_is_a_fhir_date_time_with_zone_or_a_date(criterion, study):
    da, tm, offset = study
    _, text = dicom_interval(f"{da:%Y%m%d}", tm, offset, ZoneInfo("Europe/Berlin"))
    assert text is not None
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d{6})?[+-]\d{2}:\d{2})?", text)
    if tm is not None:
        assert "T" in text


def _dicom_match(pattern: str, value: str) -> bool:
    """PS3.4 C.2.2.2.4 wildcard matching on characters: * any run, ? exactly one."""
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


@PROFILE
@given(st.text(alphabet=st.one_of(st.sampled_from(string.printable), TEXT), max_size=40))
def test_match_pattern_never_narrows(value):
    pattern, exact = match_pattern(value)
    QidoQuery("studies", (("PatientID", pattern),))  # always sendable raw
    assert _dicom_match(pattern, value)
    # Exact: the value goes as it is and holds no wildcard (the user's * and ? are literals in FHIR).
    assert exact == (pattern == value and "*" not in value and "?" not in value)
    if pattern.strip("*?"):
        assert any(ch in value for ch in pattern.replace("*", "").replace("?", ""))


@PROFILE
@given(patient_id=st.text(NO_NUL, max_size=50), issuer=st.one_of(st.none(), st.text(NO_NUL, max_size=50)))
def test_patient_ids_round_trip_or_hash(patient_id, issuer):
    fhir_id = patient_ids.encode(patient_id, issuer)
    assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", fhir_id)
    if fhir_id.startswith("p"):
        assert patient_ids.decode(fhir_id) == (patient_id, issuer or None)
    else:
        assert fhir_id.startswith("h") and patient_ids.decode(fhir_id) is None


@PROFILE
@given(a=st.tuples(st.text(NO_NUL, max_size=10), ISSUERS), b=st.tuples(st.text(NO_NUL, max_size=10), ISSUERS))
def test_distinct_pairs_get_distinct_ids(a, b):
    if a != b:
        assert patient_ids.encode(*a) != patient_ids.encode(*b)


@PROFILE
@given(
    st.one_of(
        st.text(TEXT, max_size=70), st.text("abcdefghijklmnopqrstuvwxyz234567", max_size=64).map(lambda t: "p" + t)
    )
)
def test_decode_never_raises_and_only_accepts_canonical_ids(text):
    pair = patient_ids.decode(text)
    if pair is not None:
        assert patient_ids.encode(*pair) == text


def test_the_zone_premise_holds_for_the_zones_used():
    for zone in PACS_ZONES[1:]:
        for day in (date(2020, 1, 15), date(2020, 7, 15)):
            offset = datetime.combine(day, datetime.min.time(), tzinfo=zone).utcoffset()
            assert offset is not None
            assert offset - timedelta(hours=-12) <= timedelta(hours=24)
            assert timedelta(hours=14) - offset <= timedelta(hours=24)
