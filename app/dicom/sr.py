"""Reading a DICOM SR document's DICOM JSON (PS3.18 Annex F): elements, code items, person names, the content
tree, and DA/TM/offset date-times (pure; standard library only).

Tolerant like app.dicom.kos, whose groundwork this is: a missing or oddly shaped attribute reads as ``None`` or
empty, never as an error. Elements are the DICOM JSON objects ``{"vr": …, "Value": […]}`` keyed by tag.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .dicom_json import as_int

CODE_VALUE = "00080100"
CODING_SCHEME = "00080102"
CODE_MEANING = "00080104"
LONG_CODE_VALUE = "00080119"
URN_CODE_VALUE = "00080120"
REFERENCED_FRAME_NUMBER = "00081160"
CONCEPT_NAME = "0040A043"
PERSON_NAME = "0040A123"
CONTENT_SEQUENCE = "0040A730"
# TID 2010 puts references directly under the root; the walk goes deeper to be tolerant, but bounded, so a
# pathological (deeply nested) document cannot exhaust the stack.
MAX_DEPTH = 32

_DA = re.compile(r"(\d{4})(\d{2})(\d{2})", re.ASCII)
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?", re.ASCII)
_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})", re.ASCII)


@dataclass(frozen=True)
class Code:
    """A coded concept (PS3.3 8.8 Code Sequence Macro).

    ``value`` is CodeValue, or LongCodeValue / URNCodeValue when CodeValue is absent; ``scheme`` is
    CodingSchemeDesignator, which PS3.3 8.8 does not require for a URN code.
    """

    value: str
    scheme: str | None
    meaning: str | None


@dataclass(frozen=True)
class PersonName:
    """A PN value's three component groups (PS3.18 F.2.2), each as sent (``Family^Given^…``), ``None`` if absent."""

    alphabetic: str | None
    ideographic: str | None = None
    phonetic: str | None = None


def dicom_datetime(date: str | None, time: str | None, offset: str | None = None) -> datetime | None:
    """DA ``YYYYMMDD`` + TM ``HH[MM[SS[.F{1,6}]]]`` (+ ``±HHMM``) → datetime (PS3.5 6.2), else ``None``.

    The offset (TimezoneOffsetFromUTC, PS3.3 C.12.1.1.8) makes the result aware; an unparseable offset is
    ignored rather than failing the whole value, so the result is then naive.
    """
    if date is None or time is None:
        return None
    d = _DA.fullmatch(date.strip())
    t = _TM.fullmatch(time.strip())
    if d is None or t is None:
        return None
    hour, minute, second, fraction = t.groups()
    try:
        value = datetime(
            int(d[1]),
            int(d[2]),
            int(d[3]),
            int(hour),
            int(minute or 0),
            # PS3.5 allows a leap second (60); datetime does not, so it is clamped.
            min(int(second or 0), 59),
            int((fraction or "0").ljust(6, "0")),
        )
    except ValueError:  # month 13, hour 25, ...
        return None
    zone = _OFFSET.fullmatch(offset.strip()) if offset is not None else None
    if zone is not None:
        sign, hours, minutes = zone.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        if delta < timedelta(hours=24):
            value = value.replace(tzinfo=timezone(-delta if sign == "-" else delta))
    return value


def walk(items: list[Mapping[str, object]], depth: int = 0) -> Iterator[Mapping[str, object]]:
    """Content items in document order, depth first."""
    if depth >= MAX_DEPTH:
        return
    for item in items:
        yield item
        yield from walk(items_of(item, CONTENT_SEQUENCE), depth + 1)


def frame_numbers(ref: Mapping[str, object]) -> list[int]:
    """ReferencedFrameNumber (IS, 1-n; frames count from 1). JSON numbers per PS3.18 F.2.3, but strings
    (``"3"``, or a backslash-joined ``"1\\2"`` from a careless encoder) are read too; anything else is dropped."""
    numbers: list[int] = []
    for value in values_of(ref, REFERENCED_FRAME_NUMBER):
        parts: list[object] = list(value.split("\\")) if isinstance(value, str) else [value]
        for part in parts:
            number = as_int(part)
            if number is not None and number >= 1 and number not in numbers:
                numbers.append(number)
    return numbers


def first_text(content: list[Mapping[str, object]], concept: tuple[str, str], tag: str) -> str | None:
    for item in content:
        if has_concept(item, concept):
            # Stripped: trailing spaces are padding (PS3.5 6.2), and FHIR strings should not carry leading ones.
            text = string_of(item, tag)
            if text is not None and text.strip():
                return text.strip()
    return None


def first_person(content: list[Mapping[str, object]], concept: tuple[str, str]) -> PersonName | None:
    for item in content:
        if has_concept(item, concept):
            name = person_name_of(item, PERSON_NAME)
            if name is not None:
                return name
    return None


def has_concept(item: Mapping[str, object], concept: tuple[str, str]) -> bool:
    names = items_of(item, CONCEPT_NAME)
    code = code_of(names[0]) if names else None
    return code is not None and (code.value, code.scheme) == concept


def element_of(ds: Mapping[str, object], tag: str) -> Mapping[str, object] | None:
    element = ds.get(tag)
    if element is None:
        element = ds.get(tag.lower())  # PS3.18 keys are upper-case hex; accept a lower-case server too
    return element if isinstance(element, Mapping) else None


def values_of(ds: Mapping[str, object], tag: str) -> list[object]:
    element = element_of(ds, tag)
    value = element.get("Value") if element is not None else None
    return value if isinstance(value, list) else []


def items_of(ds: Mapping[str, object], tag: str) -> list[Mapping[str, object]]:
    return [item for item in values_of(ds, tag) if isinstance(item, Mapping)]


def string_of(ds: Mapping[str, object], tag: str) -> str | None:
    """First value as a string; empty reads as None. Stripped of the padding (space, NUL) PS3.5 allows."""
    values = values_of(ds, tag)
    value = values[0] if values else None
    if not isinstance(value, str):
        return None
    return value.strip(" \x00") or None


def code_of(item: Mapping[str, object]) -> Code | None:
    value = string_of(item, CODE_VALUE) or string_of(item, LONG_CODE_VALUE) or string_of(item, URN_CODE_VALUE)
    if value is None:
        return None
    return Code(value=value, scheme=string_of(item, CODING_SCHEME), meaning=string_of(item, CODE_MEANING))


def person_name_of(ds: Mapping[str, object], tag: str) -> PersonName | None:
    values = values_of(ds, tag)
    value = values[0] if values else None
    if isinstance(value, str):  # not PS3.18 F.2.2, but some encoders send PN as a plain string
        value = {"Alphabetic": value}
    if not isinstance(value, Mapping):
        return None
    groups = [value.get(key) for key in ("Alphabetic", "Ideographic", "Phonetic")]
    alphabetic, ideographic, phonetic = (g if isinstance(g, str) and g.strip() else None for g in groups)
    if alphabetic is None and ideographic is None and phonetic is None:
        return None
    return PersonName(alphabetic, ideographic, phonetic)
