"""The one table of what the ImagingStudy search understands.

The parser (:mod:`app.search`) accepts exactly these names and modifiers, and the CapabilityStatement
(:mod:`app.capability`) is generated from the same rows, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

SP = "http://hl7.org/fhir/SearchParameter/"


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str  # FHIR SearchParamType
    definition: str
    documentation: str
    modifiers: frozenset[str] = frozenset()
    chains: tuple[str, ...] = ()


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
        "accent-insensitive) and `referrer:missing`; the PACS has no Practitioner ids, so `Practitioner/<id>` "
        "matches nothing.",
        modifiers=frozenset({"missing"}),
        chains=("name",),
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

BY_NAME = {p.name: p for p in IMAGING_STUDY_PARAMS}

# _include values served (R4 CapabilityStatement.rest.resource.searchInclude).
INCLUDES = ("ImagingStudy:endpoint", "ImagingStudy:patient")

# _summary values served (R4 search.html#summary).
SUMMARIES = ("true", "text", "data", "count", "false")

# Result parameters understood by the parser; anything else starting with "_" is unsupported.
RESULT_PARAMS = ("_count", "_offset", "_include", "_format", "_pretty", "_total", "_summary", "_sort", "_elements")

# Top-level ImagingStudy elements _elements may name (R4); mandatory ones (status, subject) are always kept.
ELEMENTS = frozenset(
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

# _sort keys served: QIDO cannot sort, so the facade sorts all matches itself (up to prequery_limit studies).
SORTS = ("started", "-started")
