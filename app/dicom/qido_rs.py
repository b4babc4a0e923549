"""QIDO-RS requests to the gateway (PS3.18 §10.6, issue 20), parsed into values the PACS request is rebuilt from
(pure).

    req = parse_qido("studies", [("PatientID", "MRN1"), ("includefield", "00081030,StudyDescription")])
    req.matches        # (Match(tag="00100020", keyword="PatientID", vr="LO", values=("MRN1",), sent="MRN1"),)
    req.fields         # ("00081030",)

What a client sends is never passed on as it was spelled (issue 20 rule 2; shared/docs/orthanc-qido.md TL;DR 1:
Debian's Orthanc 1.10 does not percent-decode query values, ignores unknown keys and silently matches nothing on
a value it cannot read). Every parameter is read into a :class:`Match`, and :attr:`Match.sent` is what the PACS
is asked, built from the parsed values only:

    attribute      keyword or 8-hex tag (PS3.18 §8.3.4.1), of the matching keys in :data:`MATCH_KEYS` only;
                   another DICOM attribute is 400 not-supported, a word that names none is 400 invalid
    UI             UID list (comma-separated, repeated parameters joined; PS3.4 C.2.2.2.2), each a PS3.5 §9.1
                   UID; a wildcard is 400 (PS3.4 C.2.2.2.4 allows none in UIDs)
    DA, TM         a value or a range (PS3.4 C.2.2.2.5), checked digit by digit, else 400
    IS             integers
    strings        PS3.4 C.2.2.2.4 wildcards ``*`` ``?`` kept; a character that cannot travel raw becomes ``?``
                   (ASCII) or ``*`` (a run of non-ASCII; Orthanc matches bytes) and the value is then *widened*:
                   ``sent`` matches a superset, and :meth:`Match.accepts` decides each row as the PACS would on
                   the client's own value (wildcards, case-insensitive: Orthanc's default, TL;DR 2); a list
                   holding a wildcard is not sent at all (a PACS could read ``A*,B`` as one pattern) and is
                   decided on our side only; a backslash (value multiplicity) is 400
    empty value    universal matching (PS3.4 C.2.2.2.3): nothing sent, every row matches
    includefield   keywords, tags, comma lists, repeated, ``all`` (PS3.18 §8.3.4.3)
    limit, offset  non-negative integers (limit ≥ 1); paging is the use case's, never the PACS's alone
    fuzzymatching  ``true`` / ``false`` (PS3.18 §8.3.4.2); not passed on: the caller says Warning 299 for true

Which rows a caller may see is not decided here: app.planning.gateway_qido adds the caller's scope.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ..errors import InvalidRequest, UnsupportedSearch
from . import dicom_json as dj
from .qido import INSTANCE_FIELDS, SERIES_FIELDS, STUDY_FIELDS, match_pattern

__all__ = ["LEVELS", "MATCH_KEYS", "Match", "QidoRequest", "parse_qido", "to_tag"]

LEVELS: Final = ("studies", "series", "instances")

# The attributes a gateway search may match on: tag → (keyword, VR, lowest level whose rows carry it: 0 study,
# 1 series, 2 instance). PS3.18 Table 10.6.1-5 (the required keys), plus what Orthanc 1.10 was measured to match
# correctly (shared/docs/orthanc-qido.md, "Matching keys"). An attribute of a lower level is refused at a higher
# one (Orthanc silently finds nothing: Modality at study level); study keys work at every level (§10.6.1.2).
MATCH_KEYS: Final[dict[str, tuple[str, str, int]]] = {
    "00080020": ("StudyDate", "DA", 0),
    "00080030": ("StudyTime", "TM", 0),
    "00080050": ("AccessionNumber", "SH", 0),
    "00080061": ("ModalitiesInStudy", "CS", 0),
    "00080090": ("ReferringPhysicianName", "PN", 0),
    "00081030": ("StudyDescription", "LO", 0),
    "00100010": ("PatientName", "PN", 0),
    "00100020": ("PatientID", "LO", 0),
    "00100021": ("IssuerOfPatientID", "LO", 0),
    "00100030": ("PatientBirthDate", "DA", 0),
    "00100040": ("PatientSex", "CS", 0),
    "0020000D": ("StudyInstanceUID", "UI", 0),
    "00200010": ("StudyID", "SH", 0),
    "00080060": ("Modality", "CS", 1),
    "00080021": ("SeriesDate", "DA", 1),
    "00080031": ("SeriesTime", "TM", 1),
    "0008103E": ("SeriesDescription", "LO", 1),
    "00180015": ("BodyPartExamined", "CS", 1),
    "0020000E": ("SeriesInstanceUID", "UI", 1),
    "00200011": ("SeriesNumber", "IS", 1),
    "00200060": ("Laterality", "CS", 1),
    "00080016": ("SOPClassUID", "UI", 2),
    "00080018": ("SOPInstanceUID", "UI", 2),
    "00200013": ("InstanceNumber", "IS", 2),
}
_MATCH_KEYWORDS: Final = {keyword: tag for tag, (keyword, _, _) in MATCH_KEYS.items()}
# ModalitiesInStudy is computed by the PACS for study rows; at lower levels no one has measured it.
_STUDY_ONLY: Final = frozenset({dj.MODALITIES_IN_STUDY})
# includefield=all: what the PACS can be asked for by name (Orthanc ignores ``all``, TL;DR 6): every matching key
# and the extra attributes the FHIR side asks for, of this level and above.
_ALL_FIELDS: Final = {
    "studies": (*STUDY_FIELDS, *(t for t, (_, _, lv) in MATCH_KEYS.items() if lv == 0)),
    "series": (*STUDY_FIELDS, *SERIES_FIELDS, *(t for t, (_, _, lv) in MATCH_KEYS.items() if lv <= 1)),
    "instances": (*STUDY_FIELDS, *INSTANCE_FIELDS, *MATCH_KEYS),
}
_RESERVED: Final = frozenset({"limit", "offset", "fuzzymatching", "includefield"})

_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")
_DATE = r"\d{8}"
_DA = re.compile(rf"{_DATE}|{_DATE}-|-{_DATE}|{_DATE}-{_DATE}")
_TIME = r"(?:[01]\d|2[0-3])(?:[0-5]\d(?:[0-5]\d(?:\.\d{1,6})?)?)?"
_TM = re.compile(rf"{_TIME}|{_TIME}-|-{_TIME}|{_TIME}-{_TIME}")
_IS = re.compile(r"[+-]?\d{1,12}")
_INT = re.compile(r"\d{1,9}")
_WILDCARDS = "*?"
MAX_VALUES: Final = 100  # values in one list (a UID list of 100 is ~6 kB of URL)
MAX_VALUE_LENGTH: Final = 256


def to_tag(name: str) -> str | None:
    """``PatientID`` or ``00100020`` (any case) → ``00100020``; None for a word that names no DICOM attribute."""
    if _TAG.fullmatch(name):
        return name.upper()
    if not _KEYWORD.fullmatch(name):
        return None
    if (known := _MATCH_KEYWORDS.get(name)) is not None:  # the matching keys: no data dictionary needed
        return known
    # Any other keyword (an includefield) takes pydicom's data dictionary, loaded on first use: importing pydicom
    # brings numpy along, 26 MiB more in every process (issue 19: memory per worker stays as it was).
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(name)
    return None if tag is None else f"{tag:08X}"


@dataclass(frozen=True)
class Match:
    """One matching attribute: the client's values (a list: any may match; empty: universal matching) and what
    the PACS is asked (``sent``; None: nothing, the rows are decided here). ``exact``: the PACS's answer needs no
    second look (``sent`` is the client's value, as the PACS reads it)."""

    tag: str
    keyword: str
    vr: str
    values: tuple[str, ...]
    sent: str | None
    exact: bool

    def accepts(self, row: dj.Dataset) -> bool:
        """Whether the row matches the client's value as the PACS matches it (PS3.4 C.2.2.2; string VRs ignore
        case and take ``*``/``?`` wildcards, as Orthanc does by default)."""
        if not self.values:
            return True
        stored = _stored(row, self.tag, self.vr)
        if self.vr == "UI":
            return any(v in self.values for v in stored)
        if self.vr in ("DA", "TM"):
            return any(_in_range(v, r, self.vr) for v in stored for r in self.values)
        if self.vr == "IS":
            wanted = {int(v) for v in self.values}
            return any(_int(v) in wanted for v in stored)
        patterns = [_pattern(v) for v in self.values]
        return any(p.fullmatch(v) for v in stored for p in patterns)


@dataclass(frozen=True)
class QidoRequest:
    """A parsed QIDO-RS request: the level searched, one :class:`Match` per attribute (by tag), the attributes
    asked for (tags; ``all_fields`` for ``includefield=all``), paging and fuzzy matching."""

    level: str
    matches: tuple[Match, ...] = ()
    fields: tuple[str, ...] = ()
    all_fields: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False

    def match(self, tag: str) -> Match | None:
        return next((m for m in self.matches if m.tag == tag), None)

    @property
    def wanted_fields(self) -> tuple[str, ...]:
        """The includefield tags to ask the PACS for (``all`` spelled out)."""
        extra = _ALL_FIELDS[self.level] if self.all_fields else ()
        return tuple(sorted({*self.fields, *extra}))


def parse_qido(level: str, params: Sequence[tuple[str, str]]) -> QidoRequest:
    """The query parameters (decoded, in order, repeats kept) of a search at ``level`` → a :class:`QidoRequest`;
    InvalidRequest (400 invalid) or UnsupportedSearch (400 not-supported) for anything it cannot pass on exactly
    or widen safely (module docstring)."""
    assert level in LEVELS, level
    depth = LEVELS.index(level)
    values: dict[str, list[str]] = {}
    fields: set[str] = set()
    all_fields = False
    once: dict[str, str] = {}
    for key, value in params:
        if key in _RESERVED:
            if key == "includefield":
                for name in _items(value, key):
                    if name == "all":
                        all_fields = True
                    elif (tag := to_tag(name)) is not None:
                        fields.add(tag)
                    else:
                        raise InvalidRequest(f"includefield: {_shown(name)} is not a DICOM attribute")
                continue
            if key in once:
                raise InvalidRequest(f"{key} is given more than once")
            once[key] = value
            continue
        tag = to_tag(key)
        if tag is None:
            raise InvalidRequest(f"{_shown(key)} is not a query parameter or a DICOM attribute (PS3.18 §8.3.4)")
        known = MATCH_KEYS.get(tag)
        if known is None:
            from pydicom.datadict import keyword_for_tag  # see to_tag

            name = keyword_for_tag(int(tag, 16)) or tag
            raise UnsupportedSearch(f"matching on {name} is not supported here")
        keyword, _, lowest = known
        if lowest > depth or (tag in _STUDY_ONLY and depth):
            raise UnsupportedSearch(f"{keyword} is not a matching key of a search for {level}")
        values.setdefault(tag, []).append(value)
    matches = tuple(_match(tag, texts) for tag, texts in sorted(values.items()))
    return QidoRequest(
        level,
        matches,
        tuple(sorted(fields)),
        all_fields,
        limit=_number(once.get("limit"), "limit", low=1),
        offset=_number(once.get("offset"), "offset", low=0) or 0,
        fuzzy=_fuzzy(once.get("fuzzymatching")),
    )


def _match(tag: str, texts: list[str]) -> Match:
    keyword, vr, _ = MATCH_KEYS[tag]
    # Repeated parameters and comma lists are one list (Orthanc lets the last repeat win, TL;DR: not passed on).
    items = [item for text in texts for item in (text.split(",") if text else [])]
    if any(not item for item in items) or len(items) > MAX_VALUES:
        raise InvalidRequest(f"{keyword}: an empty item in a list, or more than {MAX_VALUES} values")
    if not items:  # PS3.4 C.2.2.2.3 universal matching: every row, the key not sent
        return Match(tag, keyword, vr, (), None, True)
    for item in items:
        if len(item) > MAX_VALUE_LENGTH:
            raise InvalidRequest(f"{keyword}: a value longer than {MAX_VALUE_LENGTH} characters")
    if vr == "UI":
        if not all(len(i) <= 64 and _UID.fullmatch(i) for i in items):
            raise InvalidRequest(f"{keyword}: not a UID or a list of UIDs (no wildcards in UIDs, PS3.4 C.2.2.2.4)")
        unique = tuple(dict.fromkeys(items))
        return Match(tag, keyword, vr, unique, ",".join(unique), True)
    if vr in ("DA", "TM"):
        rule = _DA if vr == "DA" else _TM
        if not all(rule.fullmatch(i) and _valid_dates(i, vr) for i in items):
            raise InvalidRequest(f"{keyword}: not a {'date' if vr == 'DA' else 'time'} or a range of them")
        return Match(tag, keyword, vr, tuple(items), ",".join(items), True)
    if vr == "IS":
        if not all(_IS.fullmatch(i) for i in items):
            raise InvalidRequest(f"{keyword}: not an integer")
        ints = tuple(str(int(i)) for i in items)
        return Match(tag, keyword, vr, ints, ",".join(ints), True)
    return _string(tag, keyword, vr, items)


def _string(tag: str, keyword: str, vr: str, items: list[str]) -> Match:
    for item in items:
        if "\\" in item or any(ord(c) < 0x20 or ord(c) == 0x7F for c in item):
            raise InvalidRequest(f"{keyword}: a backslash or a control character cannot be matched")
    if len(items) == 1 and set(items[0]) == {"*"}:
        return Match(tag, keyword, vr, (), None, True)  # "*" alone: universal matching
    sent: list[str] = []
    exact = True
    for item in items:
        pattern, literal = match_pattern(item, wildcards=True)
        exact = exact and literal
        sent.append(pattern)
    wild = any(c in p for p in sent for c in _WILDCARDS)
    if len(sent) > 1 and wild:
        return Match(tag, keyword, vr, tuple(items), None, False)
    if not sent[0].strip(_WILDCARDS) and not exact:  # widened to wildcards only: decided here, not sent
        return Match(tag, keyword, vr, tuple(items), None, False)
    return Match(tag, keyword, vr, tuple(items), ",".join(sent), exact)


def _items(value: str, key: str) -> list[str]:
    items = value.split(",")
    if any(not i for i in items):
        raise InvalidRequest(f"{key}: an empty item")
    return items


def _number(text: str | None, key: str, *, low: int) -> int | None:
    if text is None:
        return None
    if not _INT.fullmatch(text) or int(text) < low:
        raise InvalidRequest(f"{key} must be an integer of at least {low}")
    return int(text)


def _fuzzy(text: str | None) -> bool:
    if text is None or text == "false":
        return False
    if text == "true":
        return True
    raise InvalidRequest("fuzzymatching must be true or false (PS3.18 §8.3.4.2)")


def _shown(text: str) -> str:
    return repr(text[:40])


def _valid_dates(text: str, vr: str) -> bool:
    if vr != "DA":
        return True
    for part in text.split("-"):
        if part and not (1 <= int(part[4:6]) <= 12 and 1 <= int(part[6:8]) <= 31):
            return False
    return True


def _stored(row: dj.Dataset, tag: str, vr: str) -> list[str]:
    if vr == "PN":
        name = dj.person_name(row, tag)
        if not name:
            return []
        groups = [name.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
        return ["=".join(groups).rstrip("=")]
    return [str(v) for v in dj.values(row, tag) if v is not None]


def _pattern(value: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value)
    return re.compile(body, re.IGNORECASE | re.DOTALL)


def _in_range(stored: str, wanted: str, vr: str) -> bool:
    if "-" not in wanted:
        return stored.startswith(wanted) if vr == "TM" else stored == wanted
    low, _, high = wanted.partition("-")
    if vr == "TM":  # compare on the precision given (PS3.4 C.2.2.2.5.1: "1030-" from 10:30:00)
        return (not low or stored[: len(low)] >= low) and (not high or stored[: len(high)] <= high)
    return (not low or stored >= low) and (not high or stored <= high)


def _int(value: str) -> int | None:
    try:
        return int(float(value))
    except ValueError:
        return None
