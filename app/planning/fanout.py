"""One QIDO query asked of several archives, and their answers made one (issue 21; IHE XCA-I's initiating gateway).

**Patient domains.** A row's patient domain is its IssuerOfPatientID, or else its archive's ``issuer`` (a source
without one is a domain of its own, named after the source): :func:`stamp` writes that issuer into the rows that
carry none, as they come from the archive, so everything above (patient ids, matching, confinement) sees one
convention. An archive stores no issuer in those rows, so a query for IssuerOfPatientID = its own domain would
match none of them: :func:`source_query` leaves that key out for it, and the caller re-checks every row (the plans
do, app.planning.plan: ``accepts``). A key naming another domain stays: rows of that domain carry it explicitly.

**Paging.** QIDO pages each archive on its own (PS3.18 §8.3.4.4), so a merged page cannot be asked for with the
same offset everywhere. The merged order is the archives' answers one after the other, in configuration order, a
row already given by an earlier archive left out (a Study, Series or SOP Instance UID is global). Its first
``offset + limit`` rows are decided by the first ``offset + limit`` rows of every archive (an archive with fewer is
exhausted, so every row it could repeat is known), so each archive is asked for those from row 0 and the merge is
cut: pages are exact and disjoint however the rows fall across archives, at the price of reading every earlier row
again (as the ModalitiesInStudy quirk already makes a deep page do, app.usecases.studies).
"""

from __future__ import annotations

from datetime import date, datetime, time, tzinfo

from ..dicom import dicom_json as dj
from ..dicom.qido import QidoQuery

ISSUER_KEYS = ("IssuerOfPatientID", dj.ISSUER_OF_PATIENT_ID)
# What identifies a row at each level: a UID, the same in every archive (PS3.3 C.7.2.1, C.7.3.1, C.12.1).
ROW_KEY = {"studies": dj.STUDY_UID, "series": dj.SERIES_UID, "instances": dj.SOP_INSTANCE_UID}
_COUNTS = (dj.NUMBER_OF_SERIES, dj.NUMBER_OF_STUDY_INSTANCES, dj.NUMBER_OF_SERIES_INSTANCES)


def domain(name: str, issuer: str | None) -> str:
    """The patient domain of an archive's rows without IssuerOfPatientID."""
    return issuer or name


def source_query(query: QidoQuery, own_domain: str | None) -> QidoQuery:
    """``query`` as one archive is asked it: from row 0, ``offset + limit`` rows (module docstring), and without an
    IssuerOfPatientID key that its unmarked rows would fail (its own domain, or a pattern that may match it).
    (A StudyDate range needs nothing for an archive in a zone of its own: it is asked in UTC days widened by one,
    which covers every zone, app.fhir.dates.qido_date_range.)"""
    params: list[tuple[str, str]] = []
    limit: int | None = None
    offset = 0
    for key, value in query.params:
        if key == "limit":
            limit = int(value)
        elif key == "offset":
            offset = int(value)
        elif key in ISSUER_KEYS and own_domain is not None and (value == own_domain or "*" in value or "?" in value):
            continue
        else:
            params.append((key, value))
    if limit is not None:
        params.append(("limit", str(offset + limit)))
    return QidoQuery(query.level, tuple(sorted(params)))


def unlimited(query: QidoQuery) -> tuple[QidoQuery, int | None]:
    """The query without its ``limit``, and the limit (an archive's answers to the same query with different
    limits are prefixes of one sequence: QIDO paging, PS3.18 §8.3.4.4)."""
    offset, limit = window(query)
    if limit is None or offset:
        return query, None
    return QidoQuery(query.level, tuple(p for p in query.params if p[0] != "limit")), limit


def limited(query: QidoQuery, limit: int) -> QidoQuery:
    return QidoQuery(query.level, tuple(sorted((*query.params, ("limit", str(limit))))))


# A study-level match that may differ between two copies of one study (each copy lists its own series' modalities).
COPY_DEPENDENT = ("ModalitiesInStudy", dj.MODALITIES_IN_STUDY)
_ROW_KEYS = ("StudyInstanceUID", dj.STUDY_UID, "includefield", "limit", "offset")


def holders_known(query: QidoQuery) -> bool:
    """Whether a study query's answers say which archives hold the studies they list: true unless its match
    depends on a copy's series (ModalitiesInStudy)."""
    return query.level == "studies" and not any(k in COPY_DEPENDENT for k, _ in query.params)


def studies_asked(query: QidoQuery) -> list[str] | None:
    """The Study Instance UIDs a series or instance query asks for, when it asks for nothing else (the rows of
    known studies); else None."""
    if query.level == "studies" or any(k not in _ROW_KEYS for k, _ in query.params):
        return None
    uids = [v for k, v in query.params if k in ("StudyInstanceUID", dj.STUDY_UID)]
    return uids[0].split(",") if len(uids) == 1 else None


def for_studies(query: QidoQuery, uids: list[str]) -> QidoQuery:
    """``query`` asking for the rows of ``uids`` only (a subset of the UIDs it asked for, so still safe raw)."""
    params = [(k, v) for k, v in query.params if k not in ("StudyInstanceUID", dj.STUDY_UID)]
    return QidoQuery(query.level, tuple(sorted((*params, ("StudyInstanceUID", ",".join(sorted(uids)))))))


def window(query: QidoQuery) -> tuple[int, int | None]:
    """The (offset, limit) a query asks for."""
    offset, limit = 0, None
    for key, value in query.params:
        if key == "offset":
            offset = int(value)
        elif key == "limit":
            limit = int(value)
    return offset, limit


def stamp_zone(rows: list[dj.Dataset], zone: tzinfo) -> list[dj.Dataset]:
    """Give study rows without TimezoneOffsetFromUTC the offset of this archive's zone at their StudyDate/Time
    (PS3.3 C.12.1.1.8: local time is the archive's; with several archives, each one's own), in place."""
    for row in rows:
        day = dj.text(row, dj.STUDY_DATE)
        if not day or dj.text(row, dj.TIMEZONE_OFFSET):
            continue
        try:
            when = datetime.combine(
                date(int(day[:4]), int(day[4:6]), int(day[6:8])), _clock(dj.text(row, dj.STUDY_TIME))
            )
        except ValueError:
            continue
        offset = when.replace(tzinfo=zone).utcoffset()
        if offset is None:
            continue
        minutes = int(offset.total_seconds() // 60)
        sign = "-" if minutes < 0 else "+"
        row[dj.TIMEZONE_OFFSET] = {"vr": "SH", "Value": [f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"]}
    return rows


def _clock(tm: str | None) -> time:
    digits = (tm or "").split(".")[0]
    if len(digits) >= 4 and digits[:4].isdigit():
        return time(min(int(digits[:2]), 23), min(int(digits[2:4]), 59))
    return time(12, 0)


def stamp(rows: list[dj.Dataset], issuer: str) -> list[dj.Dataset]:
    """Give the rows that name a patient without an issuer this archive's issuer (fresh rows: changed in place)."""
    for row in rows:
        if dj.PATIENT_ID in row and not dj.text(row, dj.ISSUER_OF_PATIENT_ID):
            row[dj.ISSUER_OF_PATIENT_ID] = {"vr": "LO", "Value": [issuer]}
    return rows


def merge(
    level: str, answers: list[list[dj.Dataset]], *, offset: int = 0, limit: int | None = None
) -> list[dj.Dataset]:
    """The archives' rows (in configuration order) as one answer: each UID once, cut to the window asked for.

    A study held by several archives is one row whose ModalitiesInStudy is the union and whose counts are the
    largest any copy gives (a lower bound of the union's: the instance rows, merged the same way, say the rest).
    Rows are never changed in place: they may be cached answers."""
    tag = ROW_KEY[level]
    out: list[dj.Dataset] = []
    at: dict[str, int] = {}
    for rows in answers:
        for row in rows:
            uid = dj.text(row, tag)
            if uid is None:
                out.append(row)
            elif uid not in at:
                at[uid] = len(out)
                out.append(row)
            elif level == "studies":
                out[at[uid]] = _joined_study(out[at[uid]], row)
    return out[offset : None if limit is None else offset + limit]


def _joined_study(first: dj.Dataset, other: dj.Dataset) -> dj.Dataset:
    joined = dict(first)
    # sorted, as an archive lists its own (Orthanc: a set), so the union does not depend on which copy came first
    modalities = sorted({*dj.texts(first, dj.MODALITIES_IN_STUDY), *dj.texts(other, dj.MODALITIES_IN_STUDY)})
    if modalities:
        joined[dj.MODALITIES_IN_STUDY] = {"vr": "CS", "Value": modalities}
    for tag in _COUNTS:
        mine, theirs = dj.integer(first, tag), dj.integer(other, tag)
        if theirs is not None and (mine is None or theirs > mine):
            joined[tag] = other[tag]
    return joined
