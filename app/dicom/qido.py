"""QIDO-RS requests (PS3.18 §10.6) as hashable values, and how a value is made safe to send.

A :class:`QidoQuery` is the normalised upstream request: the cache key and the thing unit tests compare. Its query
string is built here by hand, not by an HTTP library, because the Debian Orthanc 1.10 DICOMweb plugin does not
percent-decode query values (shared/docs/orthanc-qido.md TL;DR 1): ``^`` and ``*`` must go raw, and ``%5E`` would
silently match nothing. Values therefore only ever contain characters that are safe raw in a URL query and that
need no decoding; anything else is replaced by a wildcard and the facade re-checks the answer exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Characters sent raw: unreserved (RFC 3986) plus ^ ' : / which Orthanc needs raw and every PACS decodes to
# themselves. "*" and "?" are produced only by us, as wildcards (PS3.4 C.2.2.2.4).
_LITERAL = re.compile(r"[A-Za-z0-9\-._~^':/]")
_KEY = re.compile(r"[0-9A-Za-z]+")
_SAFE_VALUE = re.compile(r"[A-Za-z0-9\-._~^':/*?,]*")
_UID_LIST = re.compile(r"[0-9.]+(?:,[0-9.]+)*")
_DATE_RANGE = re.compile(r"\d{8}-\d{8}|\d{8}-|-\d{8}|\d{8}")

STUDY_FIELDS = ("00081030", "00100021", "00080201")  # StudyDescription, IssuerOfPatientID, TimezoneOffsetFromUTC
SERIES_FIELDS = ("00080021", "00080031", "00180015", "00200060")  # SeriesDate/Time, BodyPartExamined, Laterality
INSTANCE_FIELDS = (
    "00080008",  # ImageType (instance.title fallback)
    "00080021",
    "00080031",  # SeriesDate, SeriesTime
    "00180015",  # BodyPartExamined
    "00200060",  # Laterality
    "00420010",
    "00700080",  # DocumentTitle, ContentLabel (instance.title)
)


@dataclass(frozen=True)
class QidoQuery:
    """One QIDO-RS search: ``{base}/{level}?{params}``, params sorted so equal searches are equal keys."""

    level: str  # "studies" | "series" | "instances"
    params: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        assert self.level in ("studies", "series", "instances"), self.level
        for key, value in self.params:
            assert _KEY.fullmatch(key), key
            assert _SAFE_VALUE.fullmatch(value), value

    @classmethod
    def build(
        cls,
        level: str,
        params: dict[str, str],
        *,
        fields: tuple[str, ...] = (),
        limit: int | None = None,
        offset: int = 0,
    ) -> QidoQuery:
        items = [(k, v) for k, v in params.items()]
        items += [("includefield", f) for f in fields]
        if limit is not None:
            items.append(("limit", str(limit)))
        if offset:
            items.append(("offset", str(offset)))
        return cls(level, tuple(sorted(items)))

    @property
    def path(self) -> str:
        """Relative URL: level plus a hand-built query string (values already safe raw)."""
        if not self.params:
            return self.level
        return self.level + "?" + "&".join(f"{k}={v}" for k, v in self.params)


def match_pattern(value: str, *, wildcards: bool = False) -> tuple[str, bool]:
    """A QIDO value that matches at least every stored value equal to ``value``; and whether it is exact.

    Unsafe characters become wildcards: an ASCII one becomes ``?`` (exactly one character), a run of non-ASCII
    characters becomes ``*`` (Orthanc matches bytes, and one character may be several UTF-8 bytes). The user's own
    ``*`` and ``?`` are literals in FHIR, so they also become ``?``; with ``wildcards`` (a QIDO-RS client's value,
    PS3.4 C.2.2.2.4) they stay wildcards. A wildcard pattern widens the PACS match, never narrows it, and callers
    re-check each answer.
    """
    out: list[str] = []
    exact = True
    for ch in value:
        if (ch.isascii() and _LITERAL.match(ch)) or (wildcards and ch in "*?"):
            out.append(ch)
        elif ch.isascii():
            out.append("?")
            exact = False
        else:
            if not out or out[-1] != "*":
                out.append("*")
            exact = False
    return "".join(out), exact


def uid_list(uids: list[str] | tuple[str, ...]) -> str:
    """PS3.18 §8.3.4.1 UID list matching: comma-separated; callers pass validated UIDs only."""
    text = ",".join(uids)
    assert _UID_LIST.fullmatch(text), "UID lists carry validated UIDs only"
    return text


def date_range(text: str) -> str:
    assert _DATE_RANGE.fullmatch(text), text
    return text
