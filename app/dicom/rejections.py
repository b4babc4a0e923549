"""IOCM rejection notes applied to ImagingStudy rows (pure; IHE RAD TF-2 Rejection Note, KOS titles 113001,
113037, 113038, 113039). The PACS keeps the rejected instances (Orthanc does not apply IOCM), so the facade leaves
them out: from the instance rows, or, when only series rows are known (``_summary=true``), from the counts; and
from the rows of the series/instance-level pre-queries (app.planning.plan), so that a search cannot find a study
through an
instance it does not show (:func:`screen_instances`, :func:`doubtful_series`, :func:`screen_series`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from . import dicom_json as dj
from .kos import KeyObjectSelection

StudyRows = tuple[dj.Dataset, list[dj.Dataset]]  # a study row and its instance (or series) rows


def drop_instances(studies: list[StudyRows], rejected: frozenset[str]) -> list[StudyRows]:
    """Instance rows whose SOP Instance UID a rejection note rejects are left out."""
    if not rejected:
        return studies
    out = []
    for row, rows in studies:
        kept = [r for r in rows if dj.text(r, dj.SOP_INSTANCE_UID) not in rejected]
        out.append((narrow_modalities(row, kept) if len(kept) < len(rows) else row, kept))
    return out


def narrow_modalities(row: dj.Dataset, shown: list[dj.Dataset]) -> dj.Dataset:
    """The study row with ModalitiesInStudy (0008,0061) cut to the modalities of the rows still shown.

    ModalitiesInStudy sums up the study's series (PS3.4 C.6.2.1.1); with a modality's only instances rejected, the
    ImagingStudy would name a modality (and match a ``modality`` search) that none of its series has. Orthanc
    computes the attribute from everything it stores, rejected or not."""
    had = dj.texts(row, dj.MODALITIES_IN_STUDY)
    present = {dj.text(r, dj.MODALITY) for r in shown}
    if None in present:  # a PACS that leaves Modality out of its rows: what is shown cannot be told
        return row
    left = tuple(m for m in had if m in present)
    if len(left) == len(had):
        return row
    out = {k: v for k, v in row.items() if k != dj.MODALITIES_IN_STUDY}
    return out | {dj.MODALITIES_IN_STUDY: left} if left else out


def ko_series(studies: list[StudyRows]) -> list[tuple[str, str]]:
    """(study, series) UIDs of the KO series among series rows: where rejection notes can be."""
    return [
        (study_uid, series_uid)
        for row, rows in studies
        if (study_uid := dj.text(row, dj.STUDY_UID))
        for r in rows
        if dj.text(r, dj.MODALITY) == "KO" and (series_uid := dj.text(r, dj.SERIES_UID))
    ]


def lower_series_counts(studies: list[StudyRows], docs: Iterable[KeyObjectSelection]) -> list[StudyRows]:
    """Series rows with NumberOfSeriesRelatedInstances lowered by the instances rejected in them (a series left
    with none is dropped), and the study rows' series and instance counts lowered to match."""
    rejected = rejected_references(docs)
    if not rejected:
        return studies
    per_series = Counter(series_uid for series_uid, _ in rejected)
    out = []
    for row, rows in studies:
        kept, dropped_instances, dropped_series = [], 0, 0
        for r in rows:
            gone = per_series.get(dj.text(r, dj.SERIES_UID) or "", 0)
            had = dj.integer(r, dj.NUMBER_OF_SERIES_INSTANCES) or 0
            dropped_instances += min(gone, had)
            if gone and had - gone <= 0:
                dropped_series += 1
            else:
                kept.append(r | {dj.NUMBER_OF_SERIES_INSTANCES: (had - gone,)} if gone else r)
        if dropped_instances or dropped_series:
            row = row | {
                dj.NUMBER_OF_SERIES: (max(0, (dj.integer(row, dj.NUMBER_OF_SERIES) or 0) - dropped_series),),
                dj.NUMBER_OF_STUDY_INSTANCES: (
                    max(0, (dj.integer(row, dj.NUMBER_OF_STUDY_INSTANCES) or 0) - dropped_instances),
                ),
            }
            row = narrow_modalities(row, kept)
        out.append((row, kept))
    return out


# -- pre-query rows (instance, dicom-class: instance rows; series, bodysite: series rows) ------------------------


def rejected_references(docs: Iterable[KeyObjectSelection]) -> frozenset[tuple[str, str]]:
    """(Series Instance UID, SOP Instance UID) of every instance the rejection notes among ``docs`` reject (from
    their evidence, PS3.3 C.17.6.2)."""
    return frozenset((r.series_uid, r.sop_instance_uid) for d in docs if d.is_rejection for r in d.references)


def screen_instances(rows: list[dj.Dataset], rejected: frozenset[tuple[str, str]]) -> list[dj.Dataset]:
    """Instance rows left once the rejected instances are out (matched on the SOP Instance UID, as
    :func:`drop_instances` does for ImagingStudy content)."""
    sops = {sop for _, sop in rejected}
    return [r for r in rows if dj.text(r, dj.SOP_INSTANCE_UID) not in sops] if sops else rows


def doubtful_series(rows: list[dj.Dataset], rejected: frozenset[tuple[str, str]]) -> list[str]:
    """Series rows whose every instance may be rejected: the notes name at least as many of its instances as the
    series holds (NumberOfSeriesRelatedInstances), or the row has no count. Counting cannot settle it, since a note
    may name instances the PACS no longer holds (an archive deletes them, e.g. after 113039 "Data Retention Policy
    Expired"): these series are to be decided on their instance rows (:func:`screen_series`)."""
    named = Counter(series for series, _ in rejected)
    out = []
    for r in rows:
        series = dj.text(r, dj.SERIES_UID) or ""
        held = dj.integer(r, dj.NUMBER_OF_SERIES_INSTANCES)
        if named.get(series, 0) and (held is None or held <= named[series]):
            out.append(series)
    return list(dict.fromkeys(out))


def screen_series(
    rows: list[dj.Dataset],
    doubtful: Iterable[str],
    instance_rows: list[dj.Dataset],
    rejected: frozenset[tuple[str, str]],
) -> list[dj.Dataset]:
    """Series rows left: a doubtful series goes when none of its instance rows (``instance_rows``: those of the
    doubtful series) is left by :func:`screen_instances`; every other series row stays."""
    alive = {dj.text(r, dj.SERIES_UID) for r in screen_instances(instance_rows, rejected)}
    gone = set(doubtful) - alive
    return [r for r in rows if dj.text(r, dj.SERIES_UID) not in gone] if gone else rows


# -- the WADO-RS gateway's search answers (app.usecases.gateway_search): QIDO rows whose counts and modalities must
# agree with what is served. Rows may be DICOM JSON or slim (app.dicom.dicom_json reads both); a changed attribute
# is written as DICOM JSON, and only an attribute the PACS sent is changed.


def recount_series(rows: list[dj.Dataset], present: list[dj.Dataset]) -> list[dj.Dataset]:
    """Series rows with NumberOfSeriesRelatedInstances (0020,1209) lowered by the rejected instances the PACS
    holds in them (``present``: instance rows of rejected SOP Instance UIDs); a series left with none is left out."""
    gone = Counter(dj.text(r, dj.SERIES_UID) for r in present)
    out = []
    for row in rows:
        n = gone.get(dj.text(row, dj.SERIES_UID), 0)
        had = dj.integer(row, dj.NUMBER_OF_SERIES_INSTANCES)
        if not n or had is None:
            out.append(row)
        elif had > n:
            out.append(_set(row, dj.NUMBER_OF_SERIES_INSTANCES, "IS", [had - n]))
    return out


def recount_studies(rows: list[dj.Dataset], series: list[dj.Dataset], touched: Iterable[str]) -> list[dj.Dataset]:
    """Study rows of the ``touched`` studies (those holding a rejected instance) with their series and instance
    counts and ModalitiesInStudy (PS3.4 C.6.2.1.1: the modalities of the study's series) taken from ``series``:
    every series row of those studies, already through :func:`recount_series`."""
    touched = set(touched)
    out = []
    for row in rows:
        study = dj.text(row, dj.STUDY_UID)
        if study not in touched:
            out.append(row)
            continue
        kept = [s for s in series if dj.text(s, dj.STUDY_UID) == study]
        shown = {dj.text(s, dj.MODALITY) for s in kept}
        row = _set(row, dj.NUMBER_OF_SERIES, "IS", [len(kept)])
        row = _set(
            row,
            dj.NUMBER_OF_STUDY_INSTANCES,
            "IS",
            [sum(dj.integer(s, dj.NUMBER_OF_SERIES_INSTANCES) or 0 for s in kept)],
        )
        if None not in shown:  # a PACS that leaves Modality out of its rows: what is shown cannot be told
            row = _set(
                row, dj.MODALITIES_IN_STUDY, "CS", [m for m in dj.texts(row, dj.MODALITIES_IN_STUDY) if m in shown]
            )
        out.append(row)
    return out


def _set(row: dj.Dataset, tag: str, vr: str, values: list[object]) -> dj.Dataset:
    if tag not in row:
        return row
    return {**row, tag: {"vr": vr, "Value": values} if values else {"vr": vr}}
