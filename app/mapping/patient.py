"""A study-level QIDO row's Patient module → FHIR R4 Patient (pure).

The Patient is derived from the PACS's patient attributes, as returned at study level (PS3.18 Table 10.6.3-3:
PatientName, PatientID, PatientBirthDate, PatientSex; IssuerOfPatientID via includefield). Its id is the
reversible (PatientID, Issuer) pair of app.fhir.patient_ids, so ImagingStudy.subject references resolve here.
"""

from __future__ import annotations

from typing import Any

from ..dicom import dicom_json as dj
from ..fhir import patient_ids
from ..fhir.dates import dicom_interval
from . import names, narrative
from .imaging_study import MappingContext

# PatientSex (0010,0040) → administrative-gender (R4 required binding). Other or empty values are left out.
GENDER = {"M": "male", "F": "female", "O": "other"}
MR_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}


def patient(row: dj.Dataset, ctx: MappingContext) -> dict[str, Any]:
    pid = dj.text(row, dj.PATIENT_ID) or ""
    issuer = dj.text(row, dj.ISSUER_OF_PATIENT_ID)
    res: dict[str, Any] = {"resourceType": "Patient", "id": patient_ids.encode(pid, issuer)}
    if pid:
        ident: dict[str, Any] = {
            "use": "usual",
            "type": {"coding": [dict(MR_TYPE)]},
            "system": patient_ids.system_for(
                issuer, default=ctx.patient_system, prefix=ctx.issuer_prefix, table=ctx.issuer_systems
            ),
            "value": pid,
        }
        if issuer:
            ident["assigner"] = {"display": issuer}
        res["identifier"] = [ident]
    human = names.human_names(dj.person_name(row, dj.PATIENT_NAME))
    if human:
        res["name"] = human
    gender = GENDER.get(dj.text(row, dj.PATIENT_SEX) or "")
    if gender:
        res["gender"] = gender
    _, birth = dicom_interval(dj.text(row, dj.PATIENT_BIRTH_DATE), None, None, None)
    if birth:
        res["birthDate"] = birth
    res["text"] = narrative.patient_text(res)
    return res
