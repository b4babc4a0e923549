"""app.fhir.search: FHIR search parameters → SearchRequest (R4 search.html), strict and lenient handling."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from app.errors import InvalidRequest, UnsupportedSearch
from app.fhir import patient_ids
from app.fhir.dates import DateCriterion, Interval
from app.fhir.search import Criterion, PatientKey, SearchContext, SearchRequest, Token, is_uid, parse_search, split_or
from app.fhir.search_params import BY_NAME, IMAGING_STUDY, IMAGING_STUDY_PARAMS, PATIENT
from tests.unit.helpers import BASE, SEARCH_CTX

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
CTX = SEARCH_CTX
STRICT = dataclasses.replace(CTX, strict=True)
PID_A = patient_ids.encode("MRN0100", "HOSP-A")
PID_NONE = patient_ids.encode("MRN0100", None)


def parse(*items: tuple[str, str], ctx: SearchContext = CTX) -> SearchRequest:
    return parse_search(list(items), ctx)


def values(*items: tuple[str, str], ctx: SearchContext = CTX) -> list[tuple]:
    """The parsed values of each criterion, in order."""
    return [c.values for c in parse(*items, ctx=ctx).criteria]


class TestCombining:
    def test_repeated_parameters_are_anded_and_commas_ored(self):
        req = parse(("modality", "CT,MR"), ("modality", "US"))
        assert req.criteria == (
            Criterion("modality", ("CT", "MR"), "modality", "CT,MR"),
            Criterion("modality", ("US",), "modality", "US"),
        )
        assert [c.values for c in req.all("modality")] == [("CT", "MR"), ("US",)]

    def test_defaults(self):
        assert parse() == SearchRequest((), count=20, offset=0, includes=frozenset(), pretty=False, summary="false")

    @pytest.mark.parametrize("name", ["identifier", "patient", "started", "modality", "_id", "series", "status"])
    def test_empty_values_are_ignored(self, name):
        req = parse((name, ""))
        assert req.criteria == ()
        assert not req.matches_nothing

    def test_matches_nothing_when_a_criterion_has_no_usable_value(self):
        req = parse(("modality", "CT"), ("identifier", "urn:dicom:uid|not-a-urn"))
        assert req.criteria[1].values == ()
        assert req.matches_nothing


class TestEscaping:
    @pytest.mark.parametrize(
        ("raw", "parts"),
        [
            ("a,b", ["a", "b"]),
            ("a\\,b", ["a\\,b"]),  # kept escaped: the token parser undoes it after finding the "|"
            ("a\\\\,b", ["a\\\\", "b"]),  # an escaped backslash does not escape the comma
            (",", ["", ""]),
            ("a,", ["a", ""]),
            ("a\\", ["a\\"]),  # a trailing backslash escapes nothing
        ],
    )
    def test_split_or(self, raw, parts):
        assert split_or(raw) == parts

    def test_escaped_comma_pipe_and_backslash_in_tokens(self):
        [(a, b, c, d)] = values(("identifier", "sys\\|x|ACC\\,1,ACC\\|2,ACC\\\\3,s|v\\$"))
        assert a == Token("sys|x", "ACC,1")
        assert b == Token(None, "ACC|2")
        assert c == Token(None, "ACC\\3")
        assert d == Token("s", "v$")

    def test_the_first_unescaped_pipe_separates_system_and_code(self):
        assert values(("identifier", "a|b|c")) == [(Token("a", "b|c"),)]

    def test_escaped_comma_in_a_patient_identifier(self):
        assert values(("patient.identifier", "MRN\\,1")) == [(PatientKey("MRN,1", None, any_issuer=True),)]


class TestIdentifier:
    def test_study_uid_forms(self):
        got = values(("identifier", "urn:dicom:uid|urn:oid:1.2.3,urn:oid:1.2.4"))
        assert got == [(Token("urn:dicom:uid", "1.2.3"), Token("urn:dicom:uid", "1.2.4"))]

    @pytest.mark.parametrize(
        "raw",
        [
            "urn:dicom:uid|1.2.3",  # the value must be urn:oid:<uid>
            "urn:dicom:uid|urn:oid:01.2",  # leading zero: not a UID
            "urn:dicom:uid|urn:oid:1.2.",
            "urn:dicom:uid|urn:oid:1",
            "urn:dicom:uid|urn:oid:" + "1." * 32 + "1",  # 65 characters
            "urn:oid:1.2.x",
            "urn:dicom:uid|",
        ],
    )
    def test_malformed_study_uids_match_nothing(self, raw):
        req = parse(("identifier", raw))
        assert req.criteria[0].values == ()
        assert req.matches_nothing

    def test_accession_with_and_without_system(self):
        got = values(("identifier", "ACC-1,http://hospital-a.example.org/acc|ACC-2,|ACC-3"))
        assert got == [(Token(None, "ACC-1"), Token("http://hospital-a.example.org/acc", "ACC-2"), Token("", "ACC-3"))]

    def test_mixed_study_uid_and_accession_in_one_parameter_parse(self):
        got = values(("identifier", "urn:oid:1.2.3,ACC"))
        assert got == [(Token("urn:dicom:uid", "1.2.3"), Token(None, "ACC"))]

    def test_star_is_a_literal_token_not_a_wildcard(self):
        # FHIR has no wildcards in tokens: "*" is an accession number "*", which the planner must not turn
        # into QIDO universal matching.
        assert values(("identifier", "*")) == [(Token(None, "*"),)]

    def test_values_longer_than_any_dicom_lo_match_nothing(self):
        assert values(("identifier", "A" * 64)) == [(Token(None, "A" * 64),)]
        assert values(("identifier", "A" * 65)) == [()]
        assert values(("patient.identifier", "M" * 65)) == [()]

    def test_system_without_code_is_dropped(self):
        assert values(("identifier", "http://x|")) == [()]


class TestId:
    def test_id_takes_bare_uids_only(self):
        assert values(("_id", "1.2.3,urn:oid:1.2.4,abc,sys|1.2.5,1.2.6")) == [("1.2.3", "1.2.6")]

    @pytest.mark.parametrize(
        ("text", "ok"),
        [
            ("1.2.3", True),
            ("0.1", True),
            ("1.0.2", True),
            ("1", False),
            ("01.2", False),
            ("1..2", False),
            ("1.2.", False),
            (".1.2", False),
            ("1.2a", False),
            ("1." * 31 + "12", True),
            ("1." * 32 + "1", False),
            ("1.\u0662", False),
        ],
    )
    def test_is_uid(self, text, ok):
        assert is_uid(text) is ok


class TestPatient:
    def test_reference_forms(self):
        got = values(
            ("patient", f"Patient/{PID_A}"),
            ("patient", PID_A),
            ("patient", f"{BASE}/Patient/{PID_A}"),
            ("patient:Patient", PID_A),
            ("subject", f"Patient/{PID_NONE}"),
        )
        a = PatientKey("MRN0100", "HOSP-A")
        assert got == [(a,), (a,), (a,), (a,), (PatientKey("MRN0100", None),)]

    def test_base_url_with_trailing_slash(self):
        ctx = dataclasses.replace(CTX, base_url=BASE + "/")
        assert values(("patient", f"{BASE}/Patient/{PID_A}"), ctx=ctx) == [(PatientKey("MRN0100", "HOSP-A"),)]

    @pytest.mark.parametrize(
        "ref",
        [
            f"https://other.example.org/fhir/Patient/{PID_A}",  # a Patient on another server
            f"{BASE}x/Patient/{PID_A}",  # a base that merely starts like ours
            f"http://fhir.example.org/fhir/R4/Patient/{PID_A}",  # other scheme
            "Device/x",
            f"Group/{PID_A}",
            "Patient/h" + "0" * 40,  # a hash id: shown but not searchable
            "Patient/not-ours",
            f"Patient/{PID_A.upper()}",  # not the canonical spelling
            f"Patient/{PID_A}/_history/1",
        ],
    )
    def test_references_that_cannot_be_ours_match_nothing(self, ref):
        req = parse(("patient", ref))
        assert req.criteria == (Criterion("patient", (), "patient", ref),)
        assert req.matches_nothing

    def test_absolute_reference_without_a_known_base_matches_nothing(self):
        ctx = dataclasses.replace(CTX, base_url="")
        assert values(("patient", f"{BASE}/Patient/{PID_A}"), ctx=ctx) == [()]

    def test_identifier_chain_and_modifier(self):
        got = values(
            ("patient.identifier", "http://hospital-a.example.org/mrn|MRN0100"),  # configured system
            ("patient:identifier", "MRN0100"),  # no system: any issuer
            ("subject.identifier", "urn:x-imaging-facade:patient-id|MRN0100"),  # default system: no issuer
            ("patient.identifier", "urn:oid:1.2.3.4|MRN0100"),  # OID issuer
            ("patient.identifier", "urn:x-imaging-facade:issuer:HOSP%20B|MRN0100"),  # prefix system
        )
        assert got == [
            (PatientKey("MRN0100", "HOSP-A"),),
            (PatientKey("MRN0100", None, any_issuer=True),),
            (PatientKey("MRN0100", None),),
            (PatientKey("MRN0100", "1.2.3.4"),),
            (PatientKey("MRN0100", "HOSP B"),),
        ]

    def test_typed_chain(self):
        assert values(("subject:Patient.identifier", "MRN0100")) == values(("subject.identifier", "MRN0100"))

    @pytest.mark.parametrize(
        "raw",
        [
            "http://unknown.example.org/mrn|MRN0100",
            "urn:x-imaging-facade:issuer:|X",
            "urn:x-imaging-facade:patient-id|",
            "|MRN0100",
            "urn:x-imaging-facade:issuer:" + "I" * 65 + "|MRN0100",  # an issuer longer than LO
        ],
    )
    def test_identifier_with_a_system_we_never_emit_matches_nothing(self, raw):
        assert values(("patient.identifier", raw)) == [()]

    def test_identifier_or_list(self):
        got = values(("patient.identifier", "MRN1,http://hospital-a.example.org/mrn|MRN2"))
        assert got == [(PatientKey("MRN1", None, any_issuer=True), PatientKey("MRN2", "HOSP-A"))]

    def test_non_ascii_patient_round_trips_through_the_reference(self):
        pid = patient_ids.encode("Müller-7", "Klinikum Süd")
        assert values(("patient", f"Patient/{pid}")) == [(PatientKey("Müller-7", "Klinikum Süd"),)]


class TestModality:
    def test_with_and_without_dcm_system(self):
        assert values(("modality", f"CT,{DCM}|MR")) == [("CT", "MR")]

    @pytest.mark.parametrize("raw", ["http://loinc.org|CT", "|CT", "ct", "C-T", "TOOLONGMODALITYCODE", "CT*"])
    def test_other_systems_and_non_cs_values_match_nothing(self, raw):
        req = parse(("modality", raw))
        assert req.criteria[0].values == ()
        assert req.matches_nothing


class TestUidTokens:
    @pytest.mark.parametrize("name", ["series", "instance", "dicom-class"])
    def test_uid_token_forms(self, name):
        raw = "1.2.3,urn:oid:1.2.4,urn:ietf:rfc:3986|urn:oid:1.2.5,urn:dicom:uid|1.2.6,other|1.2.7,x"
        assert values((name, raw)) == [("1.2.3", "1.2.4", "1.2.5", "1.2.6")]


class TestBodySite:
    def test_snomed_codes_and_dicom_terms(self):
        got = values(("bodysite", f"{SNOMED}|816094009,{SNOMED}|43799004,ABDOMEN"))
        assert got == [("CHEST", "ABDOMEN")]

    @pytest.mark.parametrize("raw", [f"{SNOMED}|1", f"{SNOMED}|CHEST", "http://other|CHEST", "chest"])
    def test_unknown_codes_match_nothing(self, raw):
        assert values(("bodysite", raw)) == [()]


class TestStatus:
    def test_codes(self):
        assert values(("status", "available,http://hl7.org/fhir/imagingstudy-status|cancelled")) == [
            ("available", "cancelled")
        ]

    def test_known_code_with_another_system_matches_nothing(self):
        assert values(("status", "http://other|available")) == [()]

    @pytest.mark.parametrize("raw", ["bogus", "AVAILABLE", "available,bogus"])
    def test_unknown_code_is_invalid(self, raw):
        with pytest.raises(InvalidRequest, match="is not an ImagingStudy status code"):
            parse(("status", raw))


class TestStarted:
    def test_dates_are_parsed_in_the_search_zone(self):
        ctx = dataclasses.replace(CTX, search_zone=ZoneInfo("Europe/Berlin"))
        [(c,)] = values(("started", "ge2020-07-01T10:00"), ctx=ctx)
        assert c == DateCriterion("ge", Interval(c.value.low, c.value.high), "2020-07-01T10:00")
        assert c.value.low == datetime(2020, 7, 1, 8, 0, tzinfo=UTC)

    def test_or_of_dates(self):
        [(a, b)] = values(("started", "lt2019,gt2021"))
        assert (a.prefix, a.text, b.prefix, b.text) == ("lt", "2019", "gt", "2021")

    @pytest.mark.parametrize("raw", ["2020-13", "xx2020", "ap2020", "2020-05-01T10:00:00+2", "yesterday"])
    def test_bad_dates_are_invalid_requests(self, raw):
        with pytest.raises(InvalidRequest, match=r"^started: "):
            parse(("started", raw))


class TestResultParameters:
    def test_count_is_capped_at_max_count(self):
        assert parse(("_count", "5000")).count == 100
        assert parse(("_count", "100")).count == 100
        assert parse(("_count", "0")).count == 0

    @pytest.mark.parametrize("summary", [None, "true", "data", "count", "false"])
    def test_count_zero_is_summary_count(self, summary):
        """search.html#count: _count=0 asks for the total only (fhirpy's count() sends it)."""
        extra = [] if summary is None else [("_summary", summary)]
        req = parse(("_count", "0"), *extra)
        assert (req.count, req.summary) == (0, "count")
        assert req.link_params() == [("_summary", "count"), ("_count", "0")]
        assert parse(("_count", "1"), *extra).summary == (summary or "false")

    def test_offset(self):
        assert parse(("_offset", "40")).offset == 40

    @pytest.mark.parametrize("name", ["_count", "_offset"])
    @pytest.mark.parametrize("raw", ["abc", "-1", "1.5", "+5", " 5", "1e3", "1234567890", "\u0663"])
    def test_non_integer_count_and_offset_are_invalid(self, name, raw):
        with pytest.raises(InvalidRequest, match=f"^{name} must be a non-negative integer"):
            parse((name, raw))

    @pytest.mark.parametrize("name", ["_count", "_offset", "_format", "_pretty", "_total"])
    def test_result_parameters_given_twice_are_invalid(self, name):
        value = {"_count": "1", "_offset": "1", "_format": "json", "_pretty": "true", "_total": "none"}[name]
        with pytest.raises(InvalidRequest, match="given more than once"):
            parse((name, value), (name, value))

    def test_include_endpoint(self):
        assert parse(("_include", "ImagingStudy:endpoint")).include_endpoint

    @pytest.mark.parametrize("fmt", ["json", "application/fhir+json", "xml", "application/fhir+xml"])
    def test_format_is_left_to_content_negotiation(self, fmt):
        # _format=xml -> 406 is app.http.fhir_http.negotiate's job (with the Accept header; tests/api cover it);
        # the parser only keeps it out of the search and out of the links.
        req = parse(("_format", fmt))
        assert req == parse()
        assert req.link_params() == [("_count", "20")]

    def test_pretty(self):
        assert parse(("_pretty", "true")).pretty
        assert not parse(("_pretty", "false")).pretty
        with pytest.raises(InvalidRequest):
            parse(("_pretty", "yes"))

    def test_total(self):
        assert parse(("_total", "none")) == parse()
        assert parse(("_total", "accurate")).total == "accurate"
        assert ("_total", "estimate") in parse(("_total", "estimate"), ctx=STRICT).link_params()
        with pytest.raises(InvalidRequest):
            parse(("_total", "exact"))

    def test_sort_started_only(self):
        assert parse(("_sort", "-started")).sort == "-started"
        assert ("_sort", "started") in parse(("_sort", "started")).link_params()
        assert parse(("_sort", "_id")).sort is None
        with pytest.raises(UnsupportedSearch):
            parse(("_sort", "_id"), ctx=STRICT)

    def test_unknown_include_is_ignored_unless_strict(self):
        assert not parse(("_include", "ImagingStudy:patient")).include_endpoint
        assert parse(("_include", "ImagingStudy:patient")).include_patient
        assert parse(("_include", "ImagingStudy:*")).includes == frozenset()
        with pytest.raises(UnsupportedSearch):
            parse(("_include", "ImagingStudy:*"), ctx=STRICT)

    @pytest.mark.parametrize("value", ["true", "data", "count", "false"])
    def test_summary(self, value):
        req = parse(("_summary", value))
        assert req.summary == value
        assert (("_summary", value) in req.link_params()) is (value != "false")

    def test_summary_text_and_bad_values(self):
        assert parse(("_summary", "text"), ctx=STRICT).summary == "text"
        with pytest.raises(InvalidRequest):
            parse(("_summary", "x"))


class TestUnknownAndUnsupported:
    @pytest.mark.parametrize("key", ["foo", "_elements", "reason"])
    def test_unknown_parameters_are_ignored_and_left_out_of_links(self, key):
        req = parse((key, "x"), ("modality", "CT"))
        assert req.criteria == (Criterion("modality", ("CT",), "modality", "CT"),)
        assert req.link_params() == [("modality", "CT"), ("_count", "20")]

    @pytest.mark.parametrize("key", ["foo", "_has", "_lastUpdated"])
    def test_unknown_parameters_are_rejected_when_strict(self, key):
        with pytest.raises(UnsupportedSearch, match="is not supported"):
            parse((key, "x"), ctx=STRICT)

    def test_last_updated_where_the_pacs_says_when_studies_changed(self):
        ctx = dataclasses.replace(CTX, last_updated=True)
        req = parse(("_lastUpdated", "gt2023-04-17T04:00:00Z,eq2020"), ("_lastUpdated", "lt2025"), ctx=ctx)
        assert [[c.prefix for c in group] for group in req.last_updated] == [["gt", "eq"], ["lt"]]
        assert ("_lastUpdated", "gt2023-04-17T04:00:00Z,eq2020") in req.link_params()
        with pytest.raises(InvalidRequest, match="_lastUpdated"):
            parse(("_lastUpdated", "gtyesterday"), ctx=ctx)
        with pytest.raises(UnsupportedSearch, match="no modifiers"):
            parse(("_lastUpdated:missing", "true"), ctx=ctx)

    @pytest.mark.parametrize("value", ["gt2023-04-17T04:00:00Z", "2024", "le2024-01-01"])
    def test_last_updated_is_refused_never_ignored(self, value):
        """A PHR syncing "studies updated since" would otherwise silently re-read everything (issue 22)."""
        with pytest.raises(UnsupportedSearch, match="_lastUpdated is not supported here"):
            parse(("patient", "x"), ("_lastUpdated", value))

    @pytest.mark.parametrize(
        "key",
        [
            "patient:exact",
            "modality:text",
            "modality:above",
            "modality:above",
            "identifier:of-type",
            "started:exact",
            "patient:Device",
            "_id:below",
            "bodysite:in",
        ],
    )
    @pytest.mark.parametrize("ctx", [CTX, STRICT], ids=["lenient", "strict"])
    def test_unsupported_modifiers_are_always_rejected(self, key, ctx):
        with pytest.raises(UnsupportedSearch, match="modifier"):
            parse((key, "x"), ctx=ctx)

    @pytest.mark.parametrize("key", ["patient.name", "patient.birthdate", "subject.identifier.value", "modality.x"])
    @pytest.mark.parametrize("ctx", [CTX, STRICT], ids=["lenient", "strict"])
    def test_unsupported_chains_are_always_rejected(self, key, ctx):
        with pytest.raises(UnsupportedSearch, match="chained"):
            parse((key, "x"), ctx=ctx)

    def test_modifier_on_a_result_parameter_is_an_unknown_parameter(self):
        assert parse(("_count:x", "5")).count == 20
        with pytest.raises(UnsupportedSearch):
            parse(("_count:x", "5"), ctx=STRICT)

    def test_unsupported_search_is_an_invalid_request(self):
        # One handler on InvalidRequest covers both (the error tree in app/errors.py).
        assert issubclass(UnsupportedSearch, InvalidRequest)


class TestLinkParams:
    def test_canonical_parameters(self):
        req = parse(
            ("patient.identifier", "MRN1"),
            ("foo", "bar"),
            ("_include", "ImagingStudy:endpoint"),
            ("_count", "10"),
            ("_offset", "30"),
            ("modality", "CT,MR"),
        )
        assert req.link_params() == [
            ("patient.identifier", "MRN1"),
            ("modality", "CT,MR"),
            ("_include", "ImagingStudy:endpoint"),
            ("_count", "10"),
            ("_offset", "30"),
        ]

    def test_offset_override_and_zero_offset_left_out(self):
        req = parse(("_count", "10"), ("_offset", "30"))
        assert req.link_params(offset=40) == [("_count", "10"), ("_offset", "40")]
        assert req.link_params(offset=0) == [("_count", "10")]

    def test_values_are_kept_as_sent_with_escapes(self):
        req = parse(("identifier", "ACC\\,1"))
        assert req.link_params() == [("identifier", "ACC\\,1"), ("_count", "20")]

    def test_capped_count_is_what_the_link_says(self):
        assert parse(("_count", "5000")).link_params() == [("_count", "100")]


def test_every_table_parameter_parses_a_plain_value():
    samples = {"token": "1.2.3", "reference": f"Patient/{PID_A}", "date": "2020"}
    for spec in IMAGING_STUDY_PARAMS:
        special = {"modality": "CT", "status": "available", "bodysite": "CHEST", "endpoint": "Endpoint/wado-rs"}
        if spec.name == "referrer":  # only the chained form can match (the PACS keeps names, not ids)
            assert parse(("referrer", "Practitioner/1")).matches_nothing
            req = parse(("referrer.name", "Smith"))
            assert req.criteria[0].values == ("Smith",) and not req.matches_nothing
            continue
        value = special.get(spec.name, samples[spec.type])
        req = parse((spec.name, value))
        assert req.criteria[0].name == spec.name, spec.name
        assert not req.matches_nothing, spec.name


def test_table_names_are_unique():
    assert len(BY_NAME) == len(IMAGING_STUDY_PARAMS)
    assert len(PATIENT.by_name) == len(PATIENT.params)


def test_every_table_parameter_has_a_parser():
    from app.fhir.search_values import PARSERS

    for spec in (IMAGING_STUDY, PATIENT):
        assert set(PARSERS[spec.type]) == set(spec.by_name), spec.type


@pytest.mark.parametrize(
    ("key", "mode"), [("referrer.name", ""), ("referrer.name:exact", "exact"), ("referrer.name:contains", "contains")]
)
def test_referrer_name_string_modifiers(key, mode):
    (c,) = parse((key, "Pérez")).criteria
    assert (c.name, c.modifier, c.values, c.param) == ("referrer", mode, ("Pérez",), key)
    with pytest.raises(UnsupportedSearch):
        parse(("referrer.name:text", "x"))


def test_endpoint_reference_forms():
    assert parse(("endpoint", "Endpoint/wado-rs")).criteria[0].values == ("wado-rs",)
    assert parse(("endpoint", "wado-rs,Endpoint/other")).criteria[0].values == ("wado-rs",)
    assert parse(("endpoint", "Endpoint/other")).matches_nothing


def test_elements_keeps_known_names_only():
    req = parse(("_elements", "started,series, bogus"))
    assert req.elements == {"started", "series"}
    assert ("_elements", "series,started") in req.link_params()


class TestMissingAndNot:
    def test_missing_takes_booleans(self):
        assert parse(("started:missing", "true")).criteria[0] == Criterion(
            "started", (True,), "started:missing", "true", "missing"
        )
        with pytest.raises(InvalidRequest):
            parse(("started:missing", "maybe"))

    def test_not_keeps_only_values_that_can_occur(self):
        assert parse(("modality:not", "CT")).criteria[0].modifier == "not"
        assert parse(("modality:not", "http://other|CT")).criteria == ()
