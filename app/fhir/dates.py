"""FHIR date search (R4 §3.1.1.4.7 / search.html#date) as ranges, and DICOM DA/TM/offset as ranges.

Both a search value and a resource's ``started`` are half-open intervals ``[low, high)`` of aware datetimes, sized
by their precision: ``2020`` is the whole year, ``2020-05-01T10:00:00+02:00`` one second. The prefixes then compare
intervals exactly as the FHIR table says, so the facade can re-check what the PACS matched by day.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from datetime import timezone as fixed_zone

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
SUPPORTED_PREFIXES = frozenset(PREFIXES) - {"ap"}  # "ap" is server-defined; we do not guess a tolerance

_DATE_RE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<z>Z|[+-]\d{2}:\d{2})?)?)?)?",
    re.ASCII,
)


@dataclass(frozen=True)
class Interval:
    low: datetime
    high: datetime  # exclusive

    def __post_init__(self) -> None:
        assert self.low.tzinfo is not None and self.high.tzinfo is not None, "intervals are aware"


@dataclass(frozen=True)
class DateCriterion:
    prefix: str
    value: Interval
    text: str  # the value as the client wrote it (without prefix), for self links

    def matches(self, target: Interval) -> bool:
        """R4 search.html#prefix, applied to the target's implicit range."""
        s, t = self.value, target
        match self.prefix:
            case "eq":
                return s.low <= t.low and t.high <= s.high
            case "ne":
                return not (s.low <= t.low and t.high <= s.high)
            case "gt":
                return t.high > s.high
            case "lt":
                return t.low < s.low
            case "ge":
                return t.high > s.high or (s.low <= t.low and t.high <= s.high)
            case "le":
                return t.low < s.low or (s.low <= t.low and t.high <= s.high)
            case "sa":
                return t.low >= s.high
            case "eb":
                return t.high <= s.low
            case "ap":  # the value as widened when parsed (parse_search_date): any overlap
                return t.low < s.high and t.high > s.low
        raise AssertionError(self.prefix)


def parse_search_date(raw: str, default_zone: tzinfo, *, approximate_at: datetime | None = None) -> DateCriterion:
    """``[prefix]value`` → criterion; ValueError with a user-facing message when malformed.

    ``ap`` only with ``approximate_at`` (the time the search is made; used for ``_lastUpdated``, which the facade
    checks itself): the value widened by search.html's recommended tolerance, 10 % of the gap between that time
    and the value, on each side. Elsewhere it stays refused: the PACS's date ranges are not widened for it."""
    prefix = "eq"
    if raw[:2].isalpha():
        prefix, raw = raw[:2], raw[2:]
        if prefix not in PREFIXES:
            raise ValueError(f"unknown date prefix {prefix!r}")
        if prefix not in SUPPORTED_PREFIXES and not (prefix == "ap" and approximate_at is not None):
            raise ValueError(f"date prefix {prefix!r} is not supported")
    value = parse_fhir_datetime(raw, default_zone)
    if prefix == "ap" and approximate_at is not None:
        slack = abs(approximate_at - value.low) / 10
        value = Interval(_moved(value.low, -slack), _moved(value.high, slack))
    return DateCriterion(prefix, value, raw)


def _moved(moment: datetime, by: timedelta) -> datetime:
    try:
        return moment + by
    except OverflowError:
        return (datetime.min if by < timedelta(0) else datetime.max).replace(tzinfo=UTC)


def parse_fhir_datetime(raw: str, default_zone: tzinfo) -> Interval:
    m = _DATE_RE.fullmatch(raw)
    if not m:
        raise ValueError(f"{raw!r} is not a FHIR date or dateTime")
    g = m.groupdict()
    zone: tzinfo = default_zone
    if g["z"]:
        zone = UTC if g["z"] == "Z" else _offset_zone(g["z"].replace(":", ""))
    try:
        year = int(g["y"])
        if g["m"] is None:
            return _span(datetime(year, 1, 1), _next(lambda: datetime(year + 1, 1, 1)), zone)
        month = int(g["m"])
        if g["d"] is None:
            end = _next(lambda: datetime(year + 1, 1, 1) if month == 12 else datetime(year, month + 1, 1))
            return _span(datetime(year, month, 1), end, zone)
        day = date(year, month, int(g["d"]))
        if g["H"] is None:
            start = datetime.combine(day, datetime.min.time())
            return _span(start, _next(lambda: start + timedelta(days=1)), zone)
        start = datetime(year, month, day.day, int(g["H"]), int(g["M"]), int(g["S"] or 0))
        if g["S"] is None:
            return _span(start, _next(lambda: start + timedelta(minutes=1)), zone)
        if g["f"]:
            digits = g["f"]
            micro = int((digits + "000000")[:6])
            step = timedelta(microseconds=10 ** max(0, 6 - len(digits)))
            start = start.replace(microsecond=micro)
            return _span(start, _next(lambda: start + step), zone)
        return _span(start, _next(lambda: start + timedelta(seconds=1)), zone)
    except (ValueError, OverflowError):
        raise ValueError(f"{raw!r} is not a valid date") from None


def _next(make: Callable[[], datetime]) -> datetime:
    """The exclusive end of a period; the period ending with year 9999 ends at the last representable instant."""
    try:
        return make()
    except (ValueError, OverflowError):
        return datetime.max


def dicom_interval(
    da: str | None, tm: str | None, offset: str | None, default_zone: tzinfo | None
) -> tuple[Interval | None, str | None]:
    """StudyDate/StudyTime/TimezoneOffsetFromUTC → (interval, FHIR dateTime text).

    The zone comes from TimezoneOffsetFromUTC (0008,0201), else ``default_zone`` (the PACS's IANA zone, so DST is
    right for that date). With neither the text is the date alone: a FHIR dateTime with a time SHALL have a zone.
    The interval of a zone-less date is still needed for searching; it is taken in UTC, and the search side widens.
    """
    day = _parse_da(da)
    if day is None:
        return None, None
    zone: tzinfo | None = _offset_zone(offset) if offset and _valid_offset(offset) else default_zone
    clock = _parse_tm(tm)
    if clock is None or zone is None:
        start = datetime.combine(day, datetime.min.time(), tzinfo=zone or UTC)
        end = (start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone or UTC)
        return Interval(start, end), day.isoformat()
    start = datetime.combine(day, clock[0], tzinfo=zone)
    text = start.isoformat(timespec="microseconds" if clock[1] < timedelta(seconds=1) else "seconds")
    return Interval(start, start + clock[1]), text


_OFFSET_RE = re.compile(r"[+-]\d{4}", re.ASCII)


def _valid_offset(text: str) -> bool:
    """PS3.3 C.12.1.1.8: TimezoneOffsetFromUTC is &ZZXX within -1200..+1400; anything else is ignored."""
    if not _OFFSET_RE.fullmatch(text):
        return False
    minutes = int(text[1:3]) * 60 + int(text[3:5])
    return int(text[3:5]) < 60 and minutes <= (14 * 60 if text[0] == "+" else 12 * 60)


_TM_RE = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")


def _parse_da(da: str | None) -> date | None:
    if not da or len(da) != 8 or not da.isdigit():
        return None
    try:
        return date(int(da[:4]), int(da[4:6]), int(da[6:]))
    except ValueError:
        return None


def _parse_tm(tm: str | None) -> tuple[time, timedelta] | None:
    """DICOM TM (PS3.5 Table 6.2-1) → (time, precision). ``HH``, ``HHMM``, ``HHMMSS[.F{1,6}]``."""
    if not tm:
        return None
    m = _TM_RE.fullmatch(tm.strip())
    if not m:
        return None
    hh, mm, ss, frac = m.groups()
    try:
        micro = int((frac + "000000")[:6]) if frac else 0
        t = time(int(hh), int(mm or 0), int(ss or 0), micro)
    except ValueError:
        return None
    if frac:
        return t, timedelta(microseconds=10 ** (6 - len(frac)))
    step = timedelta(seconds=1) if ss else timedelta(minutes=1) if mm else timedelta(hours=1)
    return t, step


def _offset_zone(text: str) -> tzinfo:
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[3:5])
    return fixed_zone(sign * timedelta(hours=hours, minutes=minutes))


def qido_date_range(criteria: list[list[DateCriterion]]) -> str | None:
    """A StudyDate range (PS3.4 C.2.2.2.5, inclusive days) that is a superset of what the criteria accept.

    ``criteria`` is AND of OR-groups. Each OR-group gives a hull of days; the groups intersect. Bounds are taken as
    UTC days widened by one day each side: a stored StudyDate is local to the study's zone (TimezoneOffsetFromUTC,
    or the PACS zone), which is within -12..+14 h of UTC, so its day is never more than one away from the UTC day.
    ``ne`` bounds nothing. None: no usable bound; "EMPTY": the bounds exclude each other.
    """
    lo: date | None = None
    hi: date | None = None
    for group in criteria:
        g_lo: date | None = date.max
        g_hi: date | None = date.min
        for c in group:
            c_lo, c_hi = _bounds(c)
            g_lo = None if g_lo is None or c_lo is None else min(g_lo, c_lo)
            g_hi = None if g_hi is None or c_hi is None else max(g_hi, c_hi)
        if g_lo is not None:
            lo = g_lo if lo is None else max(lo, g_lo)
        if g_hi is not None:
            hi = g_hi if hi is None else min(hi, g_hi)
    if lo is None and hi is None:
        return None
    if lo is not None and hi is not None and lo > hi:
        return "EMPTY"
    return f"{_da(lo)}-{_da(hi)}"


def _bounds(c: DateCriterion) -> tuple[date | None, date | None]:
    low_day = _utc_day(c.value.low)
    high_day = _utc_day(c.value.high - timedelta(microseconds=1))
    match c.prefix:
        case "eq":
            return _shift(low_day, -1), _shift(high_day, 1)
        case "ge":  # overlaps above, or contained: nothing before the search range's start can match
            return _shift(low_day, -1), None
        case "gt" | "sa":  # target.high > s.high / target.low >= s.high: the study's day is at least s.high's
            return _shift(high_day, -1), None
        case "le":
            return None, _shift(high_day, 1)
        case "lt" | "eb":  # target.low < s.low / target.high <= s.low
            return None, _shift(low_day, 1)
    return None, None  # ne


def _utc_day(moment: datetime) -> date:
    try:
        return moment.astimezone(UTC).date()
    except OverflowError:  # within a day of year 1 or 9999
        return date.min if moment.year == 1 else date.max


def _shift(day: date, days: int) -> date | None:
    """``day`` moved by ``days``; None (no bound) past the ends of the calendar."""
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return None


def _da(d: date | None) -> str:
    return "" if d is None else f"{d.year:04d}{d.month:02d}{d.day:02d}"


def _span(start: datetime, end: datetime, zone: tzinfo) -> Interval:
    """Local wall-clock bounds → aware interval (a DST day in an IANA zone is 23 or 25 hours long)."""
    return Interval(start.replace(tzinfo=zone), end.replace(tzinfo=zone))


def utc_second(stamp: str | None) -> tuple[Interval, str] | None:
    """A UTC time to the second as an archive writes it (``YYYYMMDDTHHMMSS``: Orthanc's ``LastUpdate``), as the
    second it names and as a FHIR instant; None when it is not one."""
    try:
        moment = datetime.strptime(stamp or "", "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return Interval(moment, moment + timedelta(seconds=1)), moment.strftime("%Y-%m-%dT%H:%M:%SZ")
