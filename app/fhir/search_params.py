"""The one table per resource of what the search understands (ImagingStudy, Patient).

The parser (:mod:`app.fhir.search`) accepts exactly these names and modifiers, and the CapabilityStatement
(:mod:`app.http.capability`) is generated from the same rows, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SP = "http://hl7.org/fhir/SearchParameter/"


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str  # FHIR SearchParamType
    definition: str
    documentation: str
    modifiers: frozenset[str] = frozenset()
    chains: tuple[str, ...] = ()
    key: str = ""  # the name the planner knows it by, when a FHIR version renames it (R5 body-site); "" = name

    @property
    def criterion(self) -> str:
        return self.key or self.name


IMAGING_STUDY_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "_id",
        "token",
        SP + "Resource-id",
        "Study Instance UID; comma-separated values are OR-ed (QIDO UID list matching).",
    ),
    ParamSpec(
        "identifier",
        "token",
        SP + "ImagingStudy-identifier",
        "`urn:dicom:uid|urn:oid:<StudyInstanceUID>`, a bare `urn:oid:<uid>`, or the accession number "
        "(`[system]|value`; exact, case-sensitive). `:missing` (every study has its UID identifier).",
        modifiers=frozenset({"missing"}),
    ),
    ParamSpec(
        "patient",
        "reference",
        SP + "ImagingStudy-patient",
        "`Patient/<id>` with this server's Patient ids; `patient.identifier=[system]|PatientID` (also "
        "`patient:identifier`) matches PatientID and IssuerOfPatientID.",
        modifiers=frozenset({"Patient", "identifier"}),
        chains=("identifier",),
    ),
    ParamSpec(
        "subject",
        "reference",
        SP + "ImagingStudy-subject",
        "As `patient`; only Patient subjects exist here.",
        modifiers=frozenset({"Patient", "identifier"}),
        chains=("identifier",),
    ),
    ParamSpec(
        "started",
        "date",
        SP + "ImagingStudy-started",
        "Prefixes eq, ne, gt, ge, lt, le, sa, eb; partial dates; dateTime with or without zone "
        "(without: the PACS time zone setting, else UTC). `:missing`: studies without (or with) a StudyDate.",
        modifiers=frozenset({"missing"}),
    ),
    ParamSpec(
        "modality",
        "token",
        SP + "ImagingStudy-modality",
        "DICOM modality code, with or without the DCM system; comma-separated values are OR-ed. `:not` "
        "(checked by the facade, QIDO cannot negate) and `:missing`.",
        modifiers=frozenset({"not", "missing"}),
    ),
    ParamSpec("series", "token", SP + "ImagingStudy-series", "Series Instance UID."),
    ParamSpec("instance", "token", SP + "ImagingStudy-instance", "SOP Instance UID."),
    ParamSpec(
        "dicom-class", "token", SP + "ImagingStudy-dicom-class", "SOP Class UID (`urn:oid:<uid>` or the bare UID)."
    ),
    ParamSpec(
        "bodysite",
        "token",
        SP + "ImagingStudy-bodysite",
        "SNOMED CT code (`http://snomed.info/sct|<code>`) of a series body site, or a DICOM BodyPartExamined term.",
    ),
    ParamSpec(
        "referrer",
        "reference",
        SP + "ImagingStudy-referrer",
        "`referrer.name=<text>` (starts-with on any part of ReferringPhysicianName, case- and "
        "accent-insensitive; `referrer.name:exact` whole name part, `referrer.name:contains` anywhere) and "
        "`referrer:missing`; the PACS has no Practitioner ids, so `Practitioner/<id>` matches nothing.",
        modifiers=frozenset({"missing"}),
        chains=("name", "name:exact", "name:contains"),
    ),
    ParamSpec(
        "endpoint",
        "reference",
        SP + "ImagingStudy-endpoint",
        "`Endpoint/<id>` of this server's WADO-RS Endpoint (every study has it); any other endpoint matches nothing.",
    ),
    ParamSpec(
        "status",
        "token",
        SP + "ImagingStudy-status",
        "Studies in the PACS are `available`; other codes match nothing. `:not` and `:missing`.",
        modifiers=frozenset({"not", "missing"}),
    ),
)

_STRING = frozenset({"exact", "contains", "missing"})
_NAME_DOC = (
    "starts-with on any part of any PatientName group (alphabetic, ideographic, phonetic), case- and "
    "accent-insensitive; `:exact` a whole part as stored, `:contains` anywhere. Checked by the facade: no "
    "QIDO-RS wildcard can match accents (Orthanc compares bytes), so it reads the candidate studies."
)
PATIENT_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("_id", "token", SP + "Resource-id", "This server's Patient id (PatientID and issuer, reversible)."),
    ParamSpec(
        "identifier",
        "token",
        SP + "Patient-identifier",
        "`[system]|PatientID`: the system selects IssuerOfPatientID (issuer table); no system: any issuer. Exact.",
    ),
    ParamSpec("name", "string", SP + "Patient-name", "Any name part: " + _NAME_DOC, modifiers=_STRING),
    ParamSpec("family", "string", SP + "individual-family", "Family name: " + _NAME_DOC, modifiers=_STRING),
    ParamSpec("given", "string", SP + "individual-given", "Given names: " + _NAME_DOC, modifiers=_STRING),
    ParamSpec(
        "birthdate",
        "date",
        SP + "individual-birthdate",
        "PatientBirthDate, every date prefix; partial dates. `:missing`.",
        modifiers=frozenset({"missing"}),
    ),
    ParamSpec(
        "gender",
        "token",
        SP + "individual-gender",
        "male | female | other (PatientSex M, F, O); `:not` and `:missing`.",
        modifiers=frozenset({"not", "missing"}),
    ),
)

# _summary values served (R4 search.html#summary).
SUMMARIES = ("true", "text", "data", "count", "false")

# Result parameters understood by the parser; anything else starting with "_" is unsupported.
# _lastUpdated (issue 22): the types whose resources have a last change in the PACS (a study's, or the study a
# manifest's KOS is stored in); answered only where every archive says when its studies changed.
LAST_UPDATED_TYPES = frozenset({"ImagingStudy", "ImagingSelection", "DocumentReference"})
RESULT_PARAMS = ("_count", "_offset", "_include", "_format", "_pretty", "_total", "_summary", "_sort", "_elements")

# Top-level ImagingStudy elements _elements may name (R4); mandatory ones (status, subject) are always kept.
IMAGING_STUDY_ELEMENTS = frozenset(
    {
        "identifier",
        "status",
        "modality",
        "subject",
        "encounter",
        "started",
        "basedOn",
        "referrer",
        "interpreter",
        "endpoint",
        "numberOfSeries",
        "numberOfInstances",
        "procedureReference",
        "procedureCode",
        "location",
        "reasonCode",
        "reasonReference",
        "note",
        "description",
        "series",
        "text",
    }
)

PATIENT_ELEMENTS = frozenset(
    {"identifier", "active", "name", "telecom", "gender", "birthDate", "deceasedBoolean", "address", "text"}
)


@dataclass(frozen=True)
class ResourceSearch:
    """What one resource type's search accepts: parameters, _include values, _sort keys, _elements names."""

    type: str
    params: tuple[ParamSpec, ...]
    includes: tuple[str, ...] = ()  # R4 CapabilityStatement.rest.resource.searchInclude
    sorts: tuple[str, ...] = ()
    elements: frozenset[str] = frozenset()
    mandatory: frozenset[str] = frozenset()  # kept by _elements and _summary=text whatever is asked
    by_name: dict[str, ParamSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {p.name: p for p in self.params})


IMAGING_STUDY = ResourceSearch(
    "ImagingStudy",
    IMAGING_STUDY_PARAMS,
    includes=("ImagingStudy:endpoint", "ImagingStudy:patient"),
    # QIDO cannot sort, so the facade sorts all matches itself (up to prequery_limit studies).
    sorts=("started", "-started"),
    elements=IMAGING_STUDY_ELEMENTS,
    mandatory=frozenset({"status", "subject"}),
)
PATIENT = ResourceSearch("Patient", PATIENT_PARAMS, elements=PATIENT_ELEMENTS)

# R5 (hl7.org/fhir/R5/imagingstudy.html#search): the same parameters, bodysite renamed body-site.
SP5 = "http://hl7.org/fhir/SearchParameter/"
IMAGING_STUDY_R5 = dataclasses.replace(
    IMAGING_STUDY,
    params=tuple(
        dataclasses.replace(p, name="body-site", key="bodysite", definition=SP5 + "ImagingStudy-body-site")
        if p.name == "bodysite"
        else p
        for p in IMAGING_STUDY_PARAMS
    ),
)

IMAGING_SELECTION_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "_id",
        "token",
        SP5 + "Resource-id",
        "This server's ImagingSelection id (KOS SOP Instance UID and series group).",
    ),
    ParamSpec(
        "identifier",
        "token",
        SP5 + "ImagingSelection-identifier",
        "`urn:dicom:uid|urn:oid:<KOS SOP Instance UID>` or `urn:oid:<uid>`: every selection of that KOS document.",
    ),
    ParamSpec(
        "patient",
        "reference",
        SP5 + "clinical-patient",
        "`Patient/<id>` (this server's, or the linked EHR's) or `patient.identifier=[system]|PatientID`.",
        modifiers=frozenset({"Patient", "identifier"}),
        chains=("identifier",),
    ),
    ParamSpec(
        "subject",
        "reference",
        SP5 + "ImagingSelection-subject",
        "As `patient`.",
        modifiers=frozenset({"Patient", "identifier"}),
        chains=("identifier",),
    ),
    ParamSpec(
        "code",
        "token",
        SP5 + "ImagingSelection-code",
        "The purpose: the KOS document title (CID 7010), e.g. `http://dicom.nema.org/resources/ontology/DCM|113005` "
        "(For Conference) or a bare code. IOCM rejection notes are never selections.",
    ),
    ParamSpec(
        "study-uid",
        "uri",
        SP5 + "ImagingSelection-study-uid",
        "Study Instance UID of the selected instances (bare or `urn:oid:`); finds KOS stored in other studies too.",
    ),
    ParamSpec(
        "derived-from",
        "reference",
        SP5 + "ImagingSelection-derived-from",
        "`ImagingStudy/<StudyInstanceUID>` the selected instances belong to.",
    ),
    ParamSpec(
        "issued",
        "date",
        SP5 + "ImagingSelection-issued",
        "KOS ContentDate/ContentTime, every date prefix (checked on the document, not by the PACS).",
    ),
    ParamSpec(
        "body-site",
        "token",
        SP5 + "ImagingSelection-body-site",
        "SNOMED CT code or DICOM BodyPartExamined term of the selected series.",
        key="bodysite",
    ),
)
IMAGING_SELECTION = ResourceSearch(
    "ImagingSelection",
    IMAGING_SELECTION_PARAMS,
    includes=("ImagingSelection:derived-from", "ImagingSelection:endpoint"),
    elements=frozenset(
        {"identifier", "status", "subject", "issued", "performer", "code", "studyUid", "derivedFrom", "endpoint"}
        | {"seriesUid", "bodySite", "instance", "text", "extension"}
    ),
    mandatory=frozenset({"status", "code"}),
)

# IHE RAD MADO Document Responder (MHD ITI-67 plus MADO's parameters): the KOS manifests as R4 DocumentReferences
# (app.mapping.document_reference), two per manifest (its DICOM and FHIR forms).
MADO_SP = "https://profiles.ihe.net/RAD/MADO/SearchParameter/SearchParameterDocumentReference"
DOCUMENT_REFERENCE_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "_id",
        "token",
        SP + "Resource-id",
        "This server's DocumentReference id (the KOS SOP Instance UID for the DICOM form, `<token>-fhir` for the "
        "FHIR form).",
    ),
    ParamSpec(
        "identifier",
        "token",
        SP + "clinical-identifier",
        "`urn:dicom:uid|urn:oid:<KOS SOP Instance UID>` (or `urn:ietf:rfc:3986|urn:oid:<uid>`, or `urn:oid:<uid>`): "
        "both forms of that manifest.",
    ),
    ParamSpec(
        "patient",
        "reference",
        SP + "clinical-patient",
        "`Patient/<id>` (this server's, or the linked EHR's) or `patient.identifier=[system]|PatientID`.",
        modifiers=frozenset({"Patient", "identifier"}),
        chains=("identifier",),
    ),
    ParamSpec(
        "subject",
        "reference",
        SP + "DocumentReference-subject",
        "As `patient`.",
        modifiers=frozenset({"Patient", "identifier"}),
        chains=("identifier",),
    ),
    ParamSpec(
        "status",
        "token",
        SP + "DocumentReference-status",
        "Manifests in the PACS are `current`; superseded and entered-in-error match nothing.",
    ),
    ParamSpec("type", "token", SP + "clinical-type", "LOINC `http://loinc.org|18748-4` (every manifest)."),
    ParamSpec("category", "token", SP + "DocumentReference-category", "LOINC `http://loinc.org|18748-4`."),
    ParamSpec(
        "format",
        "token",
        SP + "DocumentReference-format",
        "`http://dicom.nema.org/resources/ontology/DCMUID|1.2.840.10008.5.1.4.1.1.88.59` (the KOS) or "
        "`http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode|urn:ihe:rad:MADO:fhir-manifest:2026` "
        "(the FHIR document Bundle); a bare code matches too.",
    ),
    ParamSpec(
        "date",
        "date",
        SP + "DocumentReference-date",
        "KOS ContentDate/ContentTime, every date prefix (checked on the document, not by the PACS).",
    ),
    ParamSpec(
        "study-instance-uid",
        "token",
        MADO_SP + "StudyInstanceUid",
        "Study Instance UID of a referenced study (`urn:dicom:uid|urn:oid:<uid>`, `urn:oid:<uid>` or bare); finds "
        "KOS stored in another study of the patient too.",
    ),
    ParamSpec(
        "accession-number",
        "token",
        MADO_SP + "AccessionNumber",
        "`[system]|value`: the accession number of a referenced study (exact, case-sensitive).",
    ),
    ParamSpec(
        "modality",
        "token",
        MADO_SP + "Modality",
        "DICOM modality of a selected series, with or without the DCM system.",
    ),
    ParamSpec(
        "bodysite",
        "token",
        MADO_SP + "BodySite",
        "SNOMED CT code or DICOM BodyPartExamined term of a selected series.",
    ),
    ParamSpec(
        "related",
        "reference",
        SP + "DocumentReference-related",
        "`related:identifier=urn:dicom:uid|urn:oid:<Study UID>` or `[system]|<accession>`, or "
        "`related=ImagingStudy/<Study UID>`: a referenced study.",
        modifiers=frozenset({"identifier"}),
    ),
)
DOCUMENT_REFERENCE = ResourceSearch(
    "DocumentReference",
    DOCUMENT_REFERENCE_PARAMS,
    includes=("DocumentReference:subject",),
    elements=frozenset(
        {"meta", "text", "extension", "masterIdentifier", "identifier", "status", "type", "category", "subject"}
        | {"date", "author", "relatesTo", "description", "content", "context"}
    ),
    mandatory=frozenset({"status", "content"}),
)

# Kept for callers that only know the ImagingStudy search.
BY_NAME = IMAGING_STUDY.by_name
INCLUDES = IMAGING_STUDY.includes
