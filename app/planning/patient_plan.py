"""Patient SearchRequest → a study-level Plan (pure); patients are the distinct (PatientID, issuer) of its rows.

QIDO-RS has no patient level (PS3.18 §10.6 searches studies, series and instances), and every study row carries
the Patient module (Table 10.6.3-3), so a Patient search is a study search whose rows are folded into patients.

    _id, identifier   PatientID (+IssuerOfPatientID)   re-checked: case, issuer
    birthdate         PatientBirthDate range ±1 day     re-checked: FHIR prefix semantics on the day
    gender            PatientSex list (M, F, O)         re-checked; unknown: PatientSex empty or another value
    name, family,     nothing                           facade only: FHIR ignores accents, Orthanc compares
    given                                               bytes (verified: "muller*" does not find "Müller")
    :missing, :not    nothing                           presence / absence on our side
"""

from __future__ import annotations

from typing import Any

from ..dicom import dicom_json as dj
from ..fhir import patient_ids
from ..fhir.search import PatientKey, SearchRequest
from ..mapping.patient import GENDER
from .plan import Check, Plan, PlanContext, add_dates, add_patient, missing_check, name_check

# administrative-gender → PatientSex (PS3.3 C.7.1.1); "unknown" is never emitted, so it matches nothing.
SEX = {code: sex for sex, code in GENDER.items()}
_PART_OF = {"name": "name", "family": "family", "given": "given"}
_MISSING = {"name": dj.PATIENT_NAME, "family": dj.PATIENT_NAME, "given": dj.PATIENT_NAME}


def plan_patients(req: SearchRequest, ctx: PlanContext) -> Plan:
    if req.matches_nothing:
        return Plan(nothing=True)
    keys: dict[str, str] = {}
    checks: list[Check] = []
    for c in req.all("_id") + req.all("identifier"):
        add_patient(keys, checks, list(c.values))

    if not add_dates(keys, checks, [list(c.values) for c in req.all("birthdate")], "PatientBirthDate", ctx.zone):
        return Plan(nothing=True)

    for c in req.all("gender"):
        checks.append(_gender_check(frozenset(c.values)))
        sexes = sorted(SEX[g] for g in c.values if g in SEX)
        if "PatientSex" not in keys and sexes and len(sexes) == len(c.values):  # "unknown" has no PACS value
            keys["PatientSex"] = ",".join(sexes)

    for name, part in _PART_OF.items():
        for c in req.strings(name):
            checks.append(name_check(dj.PATIENT_NAME, list(c.values), c.modifier, part))

    for c in req.criteria:
        if c.modifier == "missing":
            tag = {"birthdate": dj.PATIENT_BIRTH_DATE, "gender": dj.PATIENT_SEX}.get(c.name) or _MISSING.get(c.name)
            if tag == dj.PATIENT_SEX:
                checks.append(_gender_missing(c.values[0]))
            elif tag is not None:
                checks.append(missing_check(tag, c.values[0]))
        elif c.modifier == "not" and c.name == "gender":
            checks.append(_gender_check(frozenset(c.values), negate=True))
    return Plan(study_keys=keys, checks=tuple(checks))


def gender_of(row: dj.Dataset) -> str | None:
    """The administrative-gender the Patient mapping emits for this row (None: left out)."""
    return GENDER.get(dj.text(row, dj.PATIENT_SEX) or "")


def distinct_patients(rows: list[dj.Dataset]) -> list[dj.Dataset]:
    """One study row per (PatientID, issuer), ordered by Patient id so pages stay stable as studies arrive.

    A patient's studies can carry different demographics (a name changed between visits); the most recent
    study's row speaks for the patient, as it is the PACS's latest word.
    """
    best: dict[str, dj.Dataset] = {}
    for row in rows:
        pid = dj.text(row, dj.PATIENT_ID)
        if not pid:
            continue  # PatientID is type 2: a study without one belongs to no patient we can name
        key = patient_ids.encode(pid, dj.text(row, dj.ISSUER_OF_PATIENT_ID))
        seen = best.get(key)
        if seen is None or _recency(row) > _recency(seen):
            best[key] = row
    return [best[key] for key in sorted(best)]


def _recency(row: dj.Dataset) -> tuple[str, str, str]:
    # StudyDate and StudyTime sort as text (DA, TM; PS3.5 Table 6.2-1); the UID breaks ties deterministically.
    return dj.text(row, dj.STUDY_DATE) or "", dj.text(row, dj.STUDY_TIME) or "", dj.text(row, dj.STUDY_UID) or ""


def _gender_check(codes: frozenset[str], *, negate: bool = False) -> Check:
    # :not also matches patients with no gender (search.html#modifiers: "not" is the negation of the match).
    return lambda row: (gender_of(row) in codes) != negate


def _gender_missing(missing: bool) -> Check:
    return lambda row: (gender_of(row) is None) == missing


def linked_ehr_id(row: dj.Dataset, links: dict[PatientKey, str]) -> str | None:
    """The EHR Patient id whose MRN key matches this row, if any."""
    if not links:
        return None
    pid = dj.text(row, dj.PATIENT_ID) or ""
    issuer = dj.text(row, dj.ISSUER_OF_PATIENT_ID)
    return next(
        (ehr_id for k, ehr_id in links.items() if k.patient_id == pid and (k.any_issuer or k.issuer == issuer)), None
    )


def covered(keys: list[Any], allowed: list[PatientKey]) -> bool:
    """Every key names a patient among ``allowed`` (same PatientID; the issuer too, unless either side takes any)."""
    return all(
        isinstance(k, PatientKey)
        and any(
            a.patient_id == k.patient_id and (k.any_issuer or a.any_issuer or a.issuer == k.issuer) for a in allowed
        )
        for k in keys
    )
