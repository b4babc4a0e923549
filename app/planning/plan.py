"""SearchRequest → what to ask the PACS (QIDO keys) and what to re-check on our side (pure).

The PACS is asked for a superset; :meth:`Plan.accepts` then applies FHIR's exact semantics to each study row.
The split, by parameter (PS3.18 Table 10.6.1-5 for what QIDO can match at study level):

    _id, identifier(uid)  StudyInstanceUID UID list          exact by nature
    identifier(accession) AccessionNumber                    re-checked: Orthanc is case-insensitive
    patient / subject     PatientID (+IssuerOfPatientID)     re-checked: case, issuer, wildcard stand-ins
    started               StudyDate range, widened ±1 day    re-checked: FHIR prefix semantics on the interval
    modality              ModalitiesInStudy list             re-checked (case); later groups only here
    status                nothing (always "available")       the value itself
    referrer.name         nothing (accents: see below)       starts-with on any name part, no case or accents
    :missing, :not        nothing (QIDO cannot negate)       presence / absence of the attribute
    series, instance,     a pre-query at series/instance     rows re-checked exactly, then the study UIDs
    dicom-class, bodysite level, per parameter               found are intersected
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo

from ..dicom import dicom_json as dj
from ..dicom.qido import QidoQuery, date_range, match_pattern, uid_list
from ..errors import UnsupportedSearch
from ..fhir.dates import DateCriterion, dicom_interval, qido_date_range
from ..fhir.search import DICOM_UID_SYSTEM, PatientKey, SearchRequest, Token
from ..mapping import names

Row = dj.Dataset
Check = Callable[[Row], bool]

# Series/instance-level parameters → (QIDO level, matching key, attribute to re-check).
PREQUERY_KEYS: dict[str, tuple[str, str, str]] = {
    "series": ("series", "SeriesInstanceUID", dj.SERIES_UID),
    "bodysite": ("series", "BodyPartExamined", dj.BODY_PART),
    "instance": ("instances", "SOPInstanceUID", dj.SOP_INSTANCE_UID),
    "dicom-class": ("instances", "SOPClassUID", dj.SOP_CLASS_UID),
}


@dataclass(frozen=True)
class Prequery:
    query: QidoQuery
    attribute: str
    accepted: frozenset[str]

    def study_uids(self, rows: list[Row]) -> list[str]:
        return [uid for r in rows if dj.text(r, self.attribute) in self.accepted and (uid := dj.text(r, dj.STUDY_UID))]


@dataclass(frozen=True)
class Plan:
    nothing: bool = False
    study_keys: dict[str, str] = field(default_factory=dict)
    study_uids: tuple[str, ...] | None = None  # an explicit UID constraint (None: none)
    prequeries: tuple[Prequery, ...] = ()
    checks: tuple[Check, ...] = ()

    def accepts(self, row: Row) -> bool:
        return all(check(row) for check in self.checks)


@dataclass(frozen=True)
class PlanContext:
    accession_system: str | None
    zone: tzinfo | None  # PACS zone for DICOM dates without TimezoneOffsetFromUTC
    prequery_limit: int


def plan(req: SearchRequest, ctx: PlanContext) -> Plan:
    if req.matches_nothing or any(
        c.name == "status" and ("available" in c.values) == (c.modifier == "not")
        for c in req.criteria
        if c.modifier != "missing"
    ):
        return Plan(nothing=True)
    keys: dict[str, str] = {}
    checks: list[Check] = []
    uids: set[str] | None = None

    for c in req.all("_id"):
        uids = set(c.values) if uids is None else uids & set(c.values)
    for c in req.all("identifier"):
        tokens: list[Token] = list(c.values)
        study = {t.code for t in tokens if t.system == DICOM_UID_SYSTEM}
        accessions = [t for t in tokens if t.system != DICOM_UID_SYSTEM]
        if study and accessions:
            raise UnsupportedSearch(
                "one identifier parameter cannot OR a Study UID with an accession number; search for them separately"
            )
        if study:
            uids = study if uids is None else uids & study
        else:
            checks.append(_accession_check(accessions, ctx.accession_system))
            if "AccessionNumber" not in keys:
                put_pattern(keys, "AccessionNumber", [t.code for t in accessions])
    if uids is not None and not uids:
        return Plan(nothing=True)

    for c in req.all("patient") + req.all("subject"):
        add_patient(keys, checks, list(c.values))

    if not add_dates(keys, checks, [list(c.values) for c in req.all("started")], "StudyDate", ctx.zone):
        return Plan(nothing=True)

    for c in req.all("modality"):
        checks.append(_modality_check(frozenset(c.values)))
        if "ModalitiesInStudy" not in keys:
            keys["ModalitiesInStudy"] = ",".join(sorted(set(c.values)))  # CS values validated by the parser

    for c in req.criteria:
        if c.modifier == "missing":
            check = _missing_check(c.name, c.values[0])
            if check is None:  # identifier and status are never missing
                if c.values[0]:
                    return Plan(nothing=True)
            else:
                checks.append(check)
        elif c.modifier == "not" and c.name == "modality":
            checks.append(_not_check(_modality_check(frozenset(c.values))))
    for c in req.strings("referrer"):
        # Checked here only: FHIR string search ignores accents, and no QIDO wildcard pattern can match "Pérez"
        # for "perez" (Orthanc compares bytes), so any PACS-side key could drop a match.
        checks.append(name_check(dj.REFERRING_PHYSICIAN, list(c.values), c.modifier))

    prequeries: list[Prequery] = []
    for name, (level, key, attribute) in PREQUERY_KEYS.items():
        for c in req.all(name):
            values = sorted(set(c.values))
            value = uid_list(values) if key.endswith("UID") else ",".join(values)
            # Study-level keys narrow the pre-query too (PS3.18 §10.6.1.2: /series and /instances accept them).
            params = {k: v for k, v in keys.items() if k != "ModalitiesInStudy"} | {key: value}
            if uids is not None:
                params["StudyInstanceUID"] = uid_list(sorted(uids))
            fields = (attribute,) if name == "bodysite" else ()
            query = QidoQuery.build(level, params, fields=fields, limit=ctx.prequery_limit + 1)
            prequeries.append(Prequery(query, attribute, frozenset(values)))

    return Plan(
        study_keys=keys,
        study_uids=tuple(sorted(uids)) if uids is not None else None,
        prequeries=tuple(prequeries),
        checks=tuple(checks),
    )


def add_patient(keys: dict[str, str], checks: list[Check], pkeys: list[PatientKey]) -> None:
    """PatientID (+ IssuerOfPatientID) keys for the first patient criterion; every one is re-checked exactly."""
    checks.append(patient_check(pkeys))
    if "PatientID" not in keys:
        put_pattern(keys, "PatientID", [k.patient_id for k in pkeys])
        issuers = {k.issuer for k in pkeys if not k.any_issuer}
        if len(pkeys) == 1 and issuers and None not in issuers:
            pattern, _ = match_pattern(pkeys[0].issuer or "")
            if pattern.strip("*?"):
                keys["IssuerOfPatientID"] = pattern


def add_dates(
    keys: dict[str, str], checks: list[Check], groups: list[list[DateCriterion]], key: str, zone: tzinfo | None
) -> bool:
    """A QIDO date range on ``key`` (StudyDate or PatientBirthDate) covering every AND-ed group, re-checked
    exactly; False when the groups cannot all match (nothing to ask the PACS)."""
    if not groups:
        return True
    span = qido_date_range(groups)
    if span == "EMPTY":
        return False
    if span:
        keys[key] = date_range(span)
    checks.append(date_check(groups, zone, birth=key == "PatientBirthDate"))
    return True


def put_pattern(keys: dict[str, str], key: str, values: list[str]) -> None:
    """Send a value list only when every value is exact; a wildcard list could be read as one pattern."""
    patterns = [match_pattern(v) for v in values]
    if len(patterns) == 1:
        if patterns[0][0].strip("*?"):  # never send a pattern that is all wildcards (universal matching)
            keys[key] = patterns[0][0]
    elif all(exact for _, exact in patterns):
        keys[key] = ",".join(p for p, _ in patterns)


def _accession_check(tokens: list[Token], system: str | None) -> Check:
    def check(row: Row) -> bool:
        value = dj.text(row, dj.ACCESSION)
        return value is not None and any(
            t.code == value and (t.system is None or t.system == (system or "")) for t in tokens
        )

    return check


def patient_check(keys: list[PatientKey]) -> Check:
    def check(row: Row) -> bool:
        pid = dj.text(row, dj.PATIENT_ID) or ""
        issuer = dj.text(row, dj.ISSUER_OF_PATIENT_ID)
        return any(k.patient_id == pid and (k.any_issuer or k.issuer == issuer) for k in keys)

    return check


_MISSING_TAGS = {"started": dj.STUDY_DATE, "modality": dj.MODALITIES_IN_STUDY, "referrer": dj.REFERRING_PHYSICIAN}


def _missing_check(name: str, missing: bool) -> Check | None:
    """search.html#missing; None for parameters whose element every study has."""
    tag = _MISSING_TAGS.get(name)
    return None if tag is None else missing_check(tag, missing)


def missing_check(tag: str, missing: bool) -> Check:
    def check(row: Row) -> bool:
        return (dj.first(row, tag) is None) == missing

    return check


def _not_check(inner: Check) -> Check:
    return lambda row: not inner(row)


def name_check(tag: str, values: list[str], mode: str = "", part: str = "name") -> Check:
    """FHIR string search on a DICOM PN (search.html#string) as the HumanNames it maps to (app.mapping.names).

    ``part``: "family", "given" or "name" (family, given, prefix, suffix and the whole text). Default mode:
    a part starts with the value, ignoring case and accents; "contains": anywhere in a part, same folding;
    "exact": a part equals the value as given.
    """
    wanted = values if mode == "exact" else [fold(v) for v in values]

    def matches(text: str) -> bool:
        if mode == "exact":
            return text in wanted
        folded = fold(text)
        return any((w in folded) if mode == "contains" else folded.startswith(w) for w in wanted)

    def check(row: Row) -> bool:
        for group in (dj.person_name(row, tag) or {}).values():
            family, given, prefix, suffix = names.components(group)
            if part == "family":
                texts = [family]
            elif part == "given":
                texts = given
            else:
                texts = [family, *given, prefix, suffix, " ".join(p for p in (prefix, *given, family, suffix) if p)]
            if any(matches(t) for t in texts if t):
                return True
        return False

    return check


def fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c))


def _modality_check(codes: frozenset[str]) -> Check:
    def check(row: Row) -> bool:
        return not codes.isdisjoint(dj.texts(row, dj.MODALITIES_IN_STUDY))

    return check


def date_check(groups: list[list[DateCriterion]], zone: tzinfo | None, *, birth: bool = False) -> Check:
    """``birth``: PatientBirthDate (a date, read in ``zone`` like the search values) instead of the study start."""

    def check(row: Row) -> bool:
        if birth:
            interval, _ = dicom_interval(dj.text(row, dj.PATIENT_BIRTH_DATE), None, None, zone)
        else:
            interval, _ = dicom_interval(
                dj.text(row, dj.STUDY_DATE), dj.text(row, dj.STUDY_TIME), dj.text(row, dj.TIMEZONE_OFFSET), zone
            )
        return interval is not None and all(any(c.matches(interval) for c in g) for g in groups)

    return check
