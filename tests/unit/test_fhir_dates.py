"""app.fhir.dates: FHIR date search values and DICOM DA/TM/offset as half-open intervals.

R4 search.html#date.

Concerns: parsing search values (prefixes, partial dates, zones), the prefix table of search.html#prefix,
DICOM → FHIR dateTime text, and the QIDO StudyDate range being a superset of what the criteria accept.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC, date, datetime, timedelta
from datetime import timezone as fixed_zone
from zoneinfo import ZoneInfo

import pytest

from app.fhir.dates import DateCriterion, Interval, dicom_interval, parse_search_date, qido_date_range
from tests.unit.helpers import inside

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
PLUS_1 = fixed_zone(timedelta(hours=1))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def iv(low: datetime, high: datetime) -> Interval:
    return Interval(low, high)


class TestParseSearchDate:
    @pytest.mark.parametrize(
        ("raw", "low", "high"),
        [
            ("2020", utc(2020, 1, 1), utc(2021, 1, 1)),
            ("2020-05", utc(2020, 5, 1), utc(2020, 6, 1)),
            ("2020-12", utc(2020, 12, 1), utc(2021, 1, 1)),
            ("2020-02", utc(2020, 2, 1), utc(2020, 3, 1)),
            ("2020-05-01", utc(2020, 5, 1), utc(2020, 5, 2)),
            ("2020-12-31", utc(2020, 12, 31), utc(2021, 1, 1)),
            ("2020-05-01T10:00", utc(2020, 5, 1, 10), utc(2020, 5, 1, 10, 1)),
            ("2020-05-01T10:00Z", utc(2020, 5, 1, 10), utc(2020, 5, 1, 10, 1)),
            ("2020-05-01T10:00:00Z", utc(2020, 5, 1, 10), utc(2020, 5, 1, 10, 0, 1)),
            ("2020-05-01T10:00:00+02:00", utc(2020, 5, 1, 8), utc(2020, 5, 1, 8, 0, 1)),
            ("2020-05-01T10:00:00-05:30", utc(2020, 5, 1, 15, 30), utc(2020, 5, 1, 15, 30, 1)),
            ("2020-05-01T23:30:00-01:00", utc(2020, 5, 2, 0, 30), utc(2020, 5, 2, 0, 30, 1)),
            ("2020-05-01T10:00:00.5Z", utc(2020, 5, 1, 10, 0, 0, 500000), utc(2020, 5, 1, 10, 0, 0, 600000)),
            ("2020-05-01T10:00:00.123Z", utc(2020, 5, 1, 10, 0, 0, 123000), utc(2020, 5, 1, 10, 0, 0, 124000)),
            ("2020-05-01T10:00:00.123456Z", utc(2020, 5, 1, 10, 0, 0, 123456), utc(2020, 5, 1, 10, 0, 0, 123457)),
            # More than microsecond precision: truncated, one microsecond wide.
            ("2020-05-01T10:00:00.123456789Z", utc(2020, 5, 1, 10, 0, 0, 123456), utc(2020, 5, 1, 10, 0, 0, 123457)),
        ],
    )
    def test_partial_dates_are_intervals_sized_by_precision(self, raw, low, high):
        c = parse_search_date(raw, UTC)
        assert c == DateCriterion("eq", Interval(c.value.low, c.value.high), raw)
        assert (c.value.low, c.value.high) == (low, high)

    @pytest.mark.parametrize("prefix", ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"])
    def test_each_supported_prefix_is_split_off_and_the_text_kept(self, prefix):
        c = parse_search_date(prefix + "2020-05-01", UTC)
        assert c == DateCriterion(prefix, iv(utc(2020, 5, 1), utc(2020, 5, 2)), "2020-05-01")

    def test_no_prefix_means_eq(self):
        assert parse_search_date("2020", UTC).prefix == "eq"

    @pytest.mark.parametrize(
        ("raw", "zone", "low_utc"),
        [
            ("2020-01-15T10:00:00", BERLIN, utc(2020, 1, 15, 9)),  # winter: +01:00
            ("2020-07-15T10:00:00", BERLIN, utc(2020, 7, 15, 8)),  # summer: +02:00 (DST)
            ("2020-07-15T10:00:00", NEW_YORK, utc(2020, 7, 15, 14)),
            ("2020-07-15T10:00:00", UTC, utc(2020, 7, 15, 10)),
            ("2020-07-15", BERLIN, utc(2020, 7, 14, 22)),
            ("2020-07-15T10:00:00Z", BERLIN, utc(2020, 7, 15, 10)),  # an explicit zone wins
            ("2020-07-15T10:00:00+05:30", BERLIN, utc(2020, 7, 15, 4, 30)),
        ],
    )
    def test_values_without_zone_are_taken_in_the_search_zone(self, raw, zone, low_utc):
        assert parse_search_date(raw, zone).value.low == low_utc

    def test_a_dst_day_is_23_hours_long(self):
        c = parse_search_date("2020-03-29", BERLIN)
        assert c.value.low.astimezone(UTC) == utc(2020, 3, 28, 23)
        assert c.value.high.astimezone(UTC) == utc(2020, 3, 29, 22)

    def test_a_fall_back_day_is_25_hours_long(self):
        c = parse_search_date("2020-10-25", BERLIN)
        assert c.value.high.astimezone(UTC) - c.value.low.astimezone(UTC) == timedelta(hours=25)

    @pytest.mark.parametrize(
        "raw",
        [
            "",
            "gt",
            "20",
            "202",
            "20200",
            "2020-5",
            "2020-13",
            "2020-00",
            "2020-02-30",
            "2021-02-29",
            "2020-05-32",
            "20200501",
            "2020/05/01",
            "2020-05-01T",
            "2020-05-01T10",
            "2020-05-01T25:00",
            "2020-05-01T10:60",
            "2020-05-01T10:00:61",
            "2020-05-01 10:00:00",
            "2020-05-01T10:00:00+2",
            "2020-05-01T10:00:00+0200",
            "2020-05-01T10:00:00.Z",
            "2020-05-01T10:00:00.1234567890Z",
            "2020-05-01Z",
            "xx2020",
            "ap2020",
            "GE2020",
            "today",
            "0000",
            " 2020",
            "2020 ",
        ],
    )
    def test_malformed_values_raise_value_error(self, raw):
        with pytest.raises(ValueError):
            parse_search_date(raw, UTC)

    # Full-width and Arabic-Indic digits.
    @pytest.mark.parametrize("raw", ["\uff12\uff10\uff12\uff10", "\u0662\u0660\u0662\u0660-05-01"])
    def test_non_ascii_digits_are_not_fhir_digits(self, raw):
        with pytest.raises(ValueError):
            parse_search_date(raw, UTC)

    def test_ap_is_refused_as_unsupported_rather_than_unknown(self):
        with pytest.raises(ValueError, match="not supported"):
            parse_search_date("ap2020", UTC)
        with pytest.raises(ValueError, match="unknown date prefix 'xx'"):
            parse_search_date("xx2020", UTC)

    @pytest.mark.parametrize("raw", ["le9999-12-31", "9999-12-31T23:59:59Z", "lt9999", "9999-12"])
    def test_year_9999_is_a_valid_date(self, raw):
        c = parse_search_date(raw, UTC)
        assert c.value.low.year == 9999

    def test_year_1_parses(self):
        """At the low edge of datetime the parser still works (the overflow comes later, in the range)."""
        for raw in ("0001-01-01", "0001-01-01T00:00:00+05:00"):
            assert parse_search_date(raw, UTC).value.low.year == 1


S = iv(utc(2020, 5, 1), utc(2020, 5, 2))  # search value 2020-05-01 (a UTC day)
TARGETS = {
    "inside": iv(utc(2020, 5, 1, 10), utc(2020, 5, 1, 10, 1)),
    "equal": S,
    "before": iv(utc(2020, 4, 30, 10), utc(2020, 4, 30, 10, 1)),
    "after": iv(utc(2020, 5, 2, 10), utc(2020, 5, 2, 10, 1)),
    "adjacent_before": iv(utc(2020, 4, 30), utc(2020, 5, 1)),  # ends exactly where S starts
    "adjacent_after": iv(utc(2020, 5, 2), utc(2020, 5, 3)),  # starts exactly where S ends
    "overlaps_start": iv(utc(2020, 4, 30, 23), utc(2020, 5, 1, 23)),  # e.g. the date 2020-05-01 at +01:00
    "overlaps_end": iv(utc(2020, 5, 1, 1), utc(2020, 5, 2, 1)),  # e.g. the date 2020-05-01 at -01:00
    "contains": iv(utc(2020, 4, 1), utc(2020, 6, 1)),
}
# R4 search.html#prefix, worked out by hand for each target above.
EXPECTED_MATCHES = {
    "eq": {"inside", "equal"},
    "ne": set(TARGETS) - {"inside", "equal"},
    "gt": {"after", "adjacent_after", "overlaps_end", "contains"},
    "lt": {"before", "adjacent_before", "overlaps_start", "contains"},
    "ge": {"after", "adjacent_after", "overlaps_end", "contains", "inside", "equal"},
    "le": {"before", "adjacent_before", "overlaps_start", "contains", "inside", "equal"},
    "sa": {"after", "adjacent_after"},
    "eb": {"before", "adjacent_before"},
}


class TestPrefixSemantics:
    @pytest.mark.parametrize("prefix", sorted(EXPECTED_MATCHES))
    def test_prefix_table(self, prefix):
        c = DateCriterion(prefix, S, "2020-05-01")
        assert {name for name, target in TARGETS.items() if c.matches(target)} == EXPECTED_MATCHES[prefix]

    def test_comparison_is_on_instants_not_wall_clocks(self):
        # 2020-05-01T01:30+02:00 is 2020-04-30T23:30Z: outside the UTC day 2020-05-01.
        c = parse_search_date("2020-05-01", UTC)
        target, _ = dicom_interval("20200501", "013000", "+0200", None)
        assert target is not None
        assert not c.matches(target)
        assert parse_search_date("2020-04-30", UTC).matches(target)

    def test_year_contains_a_day_but_a_day_does_not_contain_the_year(self):
        year = parse_search_date("2020", UTC)
        day, _ = dicom_interval("20200501", None, None, None)
        assert day is not None
        assert year.matches(day)
        assert not parse_search_date("2020-05-01", UTC).matches(iv(utc(2020, 1, 1), utc(2021, 1, 1)))

    def test_a_minute_precise_search_does_not_contain_a_second_precise_study_outside_it(self):
        c = parse_search_date("2020-05-01T10:15", UTC)
        inside, _ = dicom_interval("20200501", "101559", "+0000", None)
        outside, _ = dicom_interval("20200501", "101600", "+0000", None)
        assert inside is not None and outside is not None
        assert c.matches(inside)
        assert not c.matches(outside)


class TestDicomInterval:
    def test_offset_from_timezone_offset_from_utc(self):
        interval, text = dicom_interval("20200115", "101500", "+0100", None)
        assert text == "2020-01-15T10:15:00+01:00"
        assert interval == iv(utc(2020, 1, 15, 9, 15), utc(2020, 1, 15, 9, 15, 1))

    def test_negative_and_half_hour_offsets(self):
        assert dicom_interval("20200115", "101500", "-0500", None)[1] == "2020-01-15T10:15:00-05:00"
        assert dicom_interval("20200115", "101500", "+0530", None)[1] == "2020-01-15T10:15:00+05:30"
        assert dicom_interval("20200115", "101500", "+0000", None)[1] == "2020-01-15T10:15:00+00:00"

    def test_pacs_zone_in_winter(self):
        interval, text = dicom_interval("20200115", "101500", None, BERLIN)
        assert text == "2020-01-15T10:15:00+01:00"
        assert interval is not None and interval.low == utc(2020, 1, 15, 9, 15)

    def test_pacs_zone_in_summer_follows_dst(self):
        interval, text = dicom_interval("20200715", "101500", None, BERLIN)
        assert text == "2020-07-15T10:15:00+02:00"
        assert interval is not None and interval.low == utc(2020, 7, 15, 8, 15)

    def test_the_study_offset_wins_over_the_pacs_zone(self):
        assert dicom_interval("20200715", "101500", "-0500", BERLIN)[1] == "2020-07-15T10:15:00-05:00"

    def test_neither_offset_nor_zone_gives_the_date_only(self):
        interval, text = dicom_interval("20200115", "101500", None, None)
        assert text == "2020-01-15"
        # The interval is still needed for searching: the whole day, taken in UTC.
        assert interval == iv(utc(2020, 1, 15), utc(2020, 1, 16))

    def test_no_time_gives_the_date_and_a_whole_day_in_the_zone(self):
        interval, text = dicom_interval("20200115", None, None, BERLIN)
        assert text == "2020-01-15"
        assert interval is not None
        assert (interval.low, interval.high) == (utc(2020, 1, 14, 23), utc(2020, 1, 15, 23))

    def test_no_time_on_a_dst_day_is_23_hours(self):
        interval, _ = dicom_interval("20200329", None, None, BERLIN)
        assert interval is not None
        assert interval.high.astimezone(UTC) - interval.low.astimezone(UTC) == timedelta(hours=23)

    def test_date_only_with_offset(self):
        interval, text = dicom_interval("20200115", "", "+0100", None)
        assert text == "2020-01-15"
        assert interval == iv(datetime(2020, 1, 15, tzinfo=PLUS_1), datetime(2020, 1, 16, tzinfo=PLUS_1))

    @pytest.mark.parametrize(
        ("tm", "text", "width"),
        [
            ("10", "2020-01-15T10:00:00+01:00", timedelta(hours=1)),
            ("1015", "2020-01-15T10:15:00+01:00", timedelta(minutes=1)),
            ("101530", "2020-01-15T10:15:30+01:00", timedelta(seconds=1)),
            ("101530.5", "2020-01-15T10:15:30.500000+01:00", timedelta(milliseconds=100)),
            ("101530.25", "2020-01-15T10:15:30.250000+01:00", timedelta(milliseconds=10)),
            ("101530.123456", "2020-01-15T10:15:30.123456+01:00", timedelta(microseconds=1)),
            ("10:15:30", "2020-01-15T10:15:30+01:00", timedelta(seconds=1)),  # ACR-NEMA style
            ("101530 ", "2020-01-15T10:15:30+01:00", timedelta(seconds=1)),  # space padding
            ("000000", "2020-01-15T00:00:00+01:00", timedelta(seconds=1)),
        ],
    )
    def test_time_precision_and_fractional_seconds(self, tm, text, width):
        interval, got = dicom_interval("20200115", tm, "+0100", None)
        assert got == text
        assert interval is not None and interval.high - interval.low == width

    @pytest.mark.parametrize("tm", ["2500", "1060", "abc", "1", "101530.1234567", "10.5"])
    def test_bad_time_falls_back_to_the_date(self, tm):
        assert dicom_interval("20200115", tm, "+0100", BERLIN)[1] == "2020-01-15"

    @pytest.mark.parametrize(
        "da",
        [None, "", "2020011", "202001150", "20201301", "20200230", "2020-01-15", "abcdefgh", "2020011a", "00000101"],
    )
    def test_bad_date_is_none(self, da):
        assert dicom_interval(da, "101500", "+0100", BERLIN) == (None, None)

    @pytest.mark.parametrize("offset", ["0100", "+1", "+01:00", "UTC", ""])
    def test_malformed_offset_falls_back_to_the_pacs_zone(self, offset):
        assert dicom_interval("20200715", "101500", offset, BERLIN)[1] == "2020-07-15T10:15:00+02:00"
        assert dicom_interval("20200715", "101500", offset, None)[1] == "2020-07-15"

    @pytest.mark.parametrize("offset", ["+2400", "-9999", "+9959"])
    def test_out_of_range_offset_is_ignored(self, offset):
        assert dicom_interval("20200715", "101500", offset, BERLIN)[1] == "2020-07-15T10:15:00+02:00"


def crit(raw: str, zone=UTC) -> DateCriterion:
    return parse_search_date(raw, zone)


class TestQidoDateRange:
    @pytest.mark.parametrize(
        ("groups", "expected"),
        [
            ([["2020-05-01"]], "20200430-20200502"),
            ([["eq2020"]], "20191231-20210101"),
            ([["2020-05"]], "20200430-20200601"),
            ([["2020-05-01T10:00:00Z"]], "20200430-20200502"),
            ([["ge2020-05-01"]], "20200430-"),
            ([["le2020-05-01"]], "-20200502"),
            ([["ne2020-05-01"]], None),
            # OR within a group: the hull; AND across groups: the intersection.
            ([["2020-01-10", "2020-03-05"]], "20200109-20200306"),
            ([["2020-01-10", "ne2020-03-05"]], None),
            ([["ge2020-05-01", "le2020-01-01"]], None),
            ([["ge2020-01-01"], ["le2020-01-31"]], "20191231-20200201"),
            ([["ge2020-01-01"], ["ne2020-01-15"]], "20191231-"),
            ([["2020"], ["2020-06"]], "20200531-20200701"),
            ([["le2019-06-30"], ["ge2021-01-01"]], "EMPTY"),
        ],
    )
    def test_ranges(self, groups, expected):
        assert qido_date_range([[crit(v) for v in g] for g in groups]) == expected

    @pytest.mark.parametrize("prefix", ["gt", "sa"])
    def test_after_prefixes_bound_only_below(self, prefix):
        rng = qido_date_range([[crit(prefix + "2020-05-01")]])
        assert rng is not None and rng.endswith("-") and "20200430" <= rng[:8] <= "20200501"

    @pytest.mark.parametrize("prefix", ["lt", "eb"])
    def test_before_prefixes_bound_only_above(self, prefix):
        rng = qido_date_range([[crit(prefix + "2020-05-01")]])
        assert rng is not None and rng.startswith("-") and "20200501" <= rng[1:] <= "20200502"

    def test_days_are_taken_in_utc_whatever_the_pacs_zone(self):
        # UTC days widened by one cover every study zone (-12..+14 h), so the PACS zone does not change the range.
        assert qido_date_range([[crit("2020-05-01T23:30:00Z")]]) == "20200430-20200502"
        assert qido_date_range([[crit("2020-05-01T23:30:00Z")]]) == "20200430-20200502"

    @pytest.mark.parametrize("raw", ["lt0001-01-01", "eq0001-01-01", "ge0001", "0001-01-01T00:00:00+05:00"])
    def test_first_representable_day_does_not_overflow(self, raw):
        rng = qido_date_range([[crit(raw)]])
        assert rng is None or re.fullmatch(r"\d{8}-\d{8}|\d{8}-|-\d{8}|EMPTY", rng)

    def test_years_below_1000_are_zero_padded(self):
        assert qido_date_range([[crit("0999-06-15")]]) == "09990614-09990616"


# -- the superset property, over a deterministic grid ------------------------------------------------------
# The study side: every combination a PACS row can carry (date only, hour/minute/second/fraction precision,
# an explicit offset or the PACS zone or neither); the search side: every prefix, partial and zoned values.
# If the exact re-check accepts the study, its StudyDate must be inside the range sent to the PACS.

STUDY_DAYS = ["20200429", "20200430", "20200501", "20200502", "20200503", "20191231", "20200101"]
STUDY_TIMES = [None, "00", "0030", "003000", "233000", "235959.999999", "120000", "2330"]
STUDY_OFFSETS = [None, "+0000", "+0100", "-0500", "+1400", "-1200", "+0530"]
PACS_ZONES = [None, UTC, BERLIN, NEW_YORK, KOLKATA]
SEARCH_VALUES = [
    "2020",
    "2020-05",
    "2020-05-01",
    "2020-04-30",
    "2020-05-01T00:00",
    "2020-05-01T23:30:00Z",
    "2020-05-01T10:00:00+14:00",
    "2020-05-01T00:30:00-12:00",
    "2020-05-01T12:00:00.5",
    "2020-01-01",
]
PREFIXES = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]


def test_qido_range_is_a_superset_of_the_exact_check():
    checked = matched = 0
    for zone in PACS_ZONES:
        studies = []
        for da, tm, offset in itertools.product(STUDY_DAYS, STUDY_TIMES, STUDY_OFFSETS):
            interval, _ = dicom_interval(da, tm, offset, zone)
            assert interval is not None
            studies.append((da, interval))
        for prefix, value in itertools.product(PREFIXES, SEARCH_VALUES):
            c = crit(prefix + value, zone or UTC)
            rng = qido_date_range([[c]])
            for da, interval in studies:
                checked += 1
                if c.matches(interval):
                    matched += 1
                    assert inside(da, rng), (zone, prefix + value, da, interval, rng)
    assert matched > 1000 and checked > matched  # the grid exercises both outcomes


def test_qido_range_superset_for_and_of_or_groups():
    groups_list = [
        [["ge2020-04-30", "eq2019-12-31"], ["lt2020-05-02T12:00:00+02:00"]],
        [["sa2020-04-29"], ["eb2020-05-03", "eq2020-01-01"]],
        [["gt2020-04"], ["le2020-05-01T23:59"]],
        [["2020-05-01", "2020-04-29"], ["ne2020-04-29"]],
    ]
    for zone in PACS_ZONES:
        for raw_groups in groups_list:
            groups = [[crit(v, zone or UTC) for v in g] for g in raw_groups]
            rng = qido_date_range(groups)
            for da, tm, offset in itertools.product(STUDY_DAYS, STUDY_TIMES, STUDY_OFFSETS):
                interval, _ = dicom_interval(da, tm, offset, zone)
                assert interval is not None
                if all(any(c.matches(interval) for c in g) for g in groups):
                    assert inside(da, rng), (zone, raw_groups, da, tm, offset, rng)


def test_qido_range_superset_for_offsets_more_than_a_day_apart():
    kiritimati = ZoneInfo("Pacific/Kiritimati")
    c = crit("2020-05-01", kiritimati)
    interval, _ = dicom_interval("20200429", "230000", "-1200", kiritimati)
    assert interval is not None and c.matches(interval)
    assert inside("20200429", qido_date_range([[c]]))


def test_criterion_value_is_hashable_and_frozen():
    c = crit("ge2020")
    assert hash(c) == hash(crit("ge2020"))
    with pytest.raises(AttributeError):
        c.prefix = "le"  # type: ignore[misc]


def test_interval_requires_aware_datetimes():
    with pytest.raises(AssertionError):
        Interval(datetime(2020, 1, 1), datetime(2020, 1, 2))


def test_date_only_text_is_iso():
    assert dicom_interval("20200229", None, None, None)[1] == date(2020, 2, 29).isoformat()
