"""A gateway QIDO-RS request (app.dicom.qido_rs) under the caller's scope → what the PACS is asked and what every
row it answers must pass (pure; issue 20 rule 1).

The scope decides what a search can return, never what it asks. Each constraint of the scope or of the path is
*forced*: the PACS is asked for it, in place of whatever the client said about the same attribute, and the
client's own value becomes a check on the rows (an intersection: naming another patient or study finds nothing,
exactly as an unknown value does; PatientID ``*`` or empty finds only what the scope allows):

    path studies/{s}, a capability's study   StudyInstanceUID = s          row check: that study
    path series/{se}                         SeriesInstanceUID = se        row check: that series
    a patient-context token                  PatientID (+IssuerOfPatientID) of the token's patient, as the FHIR
                                             side confines a search (app.planning.plan.add_patient: widened when
                                             it cannot be sent raw); row check: that PatientID and issuer exactly
    a user/system token, open mode           nothing forced

Every row is checked (:meth:`GatewayPlan.accepts`), whatever the PACS was asked: a PACS that ignores a key
(Orthanc ignores what it cannot read) must not widen an answer. :attr:`GatewayPlan.exact` says whether a row can
fail the checks when the PACS honours what it was sent; only then may a page be cut by the PACS (its
``limit``/``offset``), otherwise the use case reads from the first row and pages after the checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..dicom import dicom_json as dj
from ..dicom.qido_rs import Match, QidoRequest
from ..fhir.search import PatientKey
from .plan import add_patient

Row = dj.Dataset
Check = Callable[[Row], bool]

__all__ = ["GatewayPlan", "Scope", "plan_gateway"]


@dataclass(frozen=True)
class Scope:
    """What the caller may find: ``patients`` (the PACS keys of a patient-context token's patient; None when not
    confined to a patient, empty when its patient has no keys: nothing) and ``study`` (a capability's study)."""

    patients: tuple[PatientKey, ...] | None = None
    study: str | None = None


@dataclass(frozen=True)
class GatewayPlan:
    """``keys``: matching keys for the PACS (keyword → a value safe raw, app.dicom.qido.QidoQuery); ``fields``:
    includefield tags (the client's, plus what the checks read); ``checks``: what every row must pass."""

    nothing: bool = False
    keys: dict[str, str] = field(default_factory=dict)
    fields: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    exact: bool = True

    def accepts(self, row: Row) -> bool:
        return all(check(row) for check in self.checks)


def plan_gateway(req: QidoRequest, scope: Scope, *, study: str | None = None, series: str | None = None) -> GatewayPlan:
    """``study``/``series``: the path's (``studies/{s}/series``...), already validated UIDs."""
    forced: dict[str, str] = {}
    checks: list[Check] = []
    exact = True
    for tag, uid in ((dj.STUDY_UID, study), (dj.STUDY_UID, scope.study), (dj.SERIES_UID, series)):
        if uid is None:
            continue
        keyword = "StudyInstanceUID" if tag == dj.STUDY_UID else "SeriesInstanceUID"
        if forced.get(keyword, uid) != uid:  # the path names another study than the capability's
            return GatewayPlan(nothing=True)
        forced[keyword] = uid
        checks.append(_uid_check(tag, uid))
    if scope.patients is not None:
        if not scope.patients:
            return GatewayPlan(nothing=True)
        keys: dict[str, str] = {}
        add_patient(keys, checks, list(scope.patients))
        forced |= keys
        # Rows of another issuer's patient with the same PatientID (Orthanc keys patients by PatientID alone) are
        # only left out by the check when the issuer could not be sent: a page cut by the PACS could come short.
        exact = "IssuerOfPatientID" in keys and all(k.patient_id == keys.get("PatientID") for k in scope.patients)

    sent: dict[str, str] = {}
    fields = set(req.wanted_fields)
    for m in req.matches:
        if m.keyword in forced or (m.keyword == "IssuerOfPatientID" and scope.patients is not None):
            # The client's value about a forced attribute only narrows (module docstring).
            if not _can_hold(m, forced.get(m.keyword)):
                return GatewayPlan(nothing=True)
            checks.append(m.accepts)
            fields.add(m.tag)
            exact = False
            continue
        if m.sent is not None:
            sent[m.keyword] = m.sent
        if not m.exact:
            checks.append(m.accepts)
            fields.add(m.tag)
            exact = False
    if scope.patients is not None:
        fields |= {dj.PATIENT_ID, dj.ISSUER_OF_PATIENT_ID}  # IssuerOfPatientID is not in the PACS's default rows
    return GatewayPlan(keys=sent | forced, fields=tuple(sorted(fields)), checks=tuple(checks), exact=exact)


def _uid_check(tag: str, uid: str) -> Check:
    return lambda row: dj.text(row, tag) == uid


def _can_hold(m: Match, forced: str | None) -> bool:
    """False when the client's UID list cannot contain the forced UID (nothing to ask the PACS)."""
    return m.vr != "UI" or forced is None or not m.values or forced in m.values
