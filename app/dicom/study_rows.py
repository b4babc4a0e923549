"""A study's QIDO row put together from its instance rows, so that one instance-level query answers for both.

PS3.18 §10.6.3.3.3 (Table 10.6.3-5): an instance-level query across all studies returns the study-level attributes
of each match as well; the facade asks for the few that are not returned by default with ``includefield``
(app.dicom.qido.STUDY_FIELDS). What only a study-level query computes is derived here from the rows, as the PACS
computes it (PS3.18 Table 10.6.3-3, PS3.4 C.3.4): ModalitiesInStudy (0008,0061) from the series' Modality,
NumberOfStudyRelatedSeries (0020,1206) and NumberOfStudyRelatedInstances (0020,1208) by counting.

Why: the study-level request costs the PACS about as much again as a small study's instance rows (Orthanc 1.10,
measured in bench/cold.py: a one-study read takes 14.6 ms as one instance query, 22.5 ms as the two queries at once,
because Orthanc works through them one after the other), and its answer adds nothing the instance rows lack.
"""

from __future__ import annotations

from . import dicom_json as dj

# The study-level attributes an instance row carries (PS3.18 Table 10.6.3-3 and what the facade reads of them).
STUDY_TAGS = (
    dj.STUDY_UID,
    dj.STUDY_DATE,
    dj.STUDY_TIME,
    dj.TIMEZONE_OFFSET,
    dj.ACCESSION,
    dj.ISSUER_OF_ACCESSION,
    dj.REFERRING_PHYSICIAN,
    dj.STUDY_DESCRIPTION,
    dj.STUDY_ID,
    dj.PATIENT_NAME,
    dj.PATIENT_ID,
    dj.ISSUER_OF_PATIENT_ID,
    dj.PATIENT_BIRTH_DATE,
    dj.PATIENT_SEX,
)


def by_study(rows: list[dj.Dataset]) -> dict[str, list[dj.Dataset]]:
    """Instance rows grouped by StudyInstanceUID, studies in the order their first row came (the PACS's order)."""
    out: dict[str, list[dj.Dataset]] = {}
    for row in rows:
        uid = dj.text(row, dj.STUDY_UID)
        if uid:
            out.setdefault(uid, []).append(row)
    return out


def study_row(instances: list[dj.Dataset]) -> dj.Dataset:
    """The study-level row of one study's instance rows (at least one).

    Each attribute is taken from the first row that has a value: every instance of a study should carry the same
    study-level values (PS3.3 C.7.2.1), and where they differ (an empty type-2 value in one, or a later KOS without
    TimezoneOffsetFromUTC, app.dicom.kos_build) the first stored instance wins, as it does for Orthanc's study row.
    """
    out: dj.Dataset = {}
    for tag in STUDY_TAGS:
        for row in instances:
            if dj.values(row, tag):  # slim rows and full DICOM JSON alike; an empty type-2 value is no value
                out[tag] = row[tag]
                break
    modalities = {m for row in instances if (m := dj.text(row, dj.MODALITY))}
    series = {s for row in instances if (s := dj.text(row, dj.SERIES_UID))}
    if modalities:
        out[dj.MODALITIES_IN_STUDY] = tuple(sorted(modalities))
    out[dj.NUMBER_OF_SERIES] = (len(series),)
    out[dj.NUMBER_OF_STUDY_INSTANCES] = (len(instances),)
    return out
