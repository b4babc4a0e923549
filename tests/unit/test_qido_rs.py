"""app.dicom.qido_rs (the gateway's QIDO-RS parser) and app.planning.gateway_qido (the caller's scope on it), with
plain dicts: what reaches the PACS is rebuilt from parsed values only, and a patient-confined search keeps every
row of another patient out whatever the client wrote (issue 20 rules 1 and 2).
"""

from __future__ import annotations

from typing import Any

import pytest

from app.dicom import dicom_json as dj
from app.dicom.qido import QidoQuery
from app.dicom.qido_rs import Match, QidoRequest, parse_qido, to_tag
from app.errors import InvalidRequest, UnsupportedSearch
from app.fhir.search import PatientKey
from app.planning.gateway_qido import GatewayPlan, Scope, plan_gateway

S1, S2, S3 = "1.2.3.1", "1.2.3.2", "1.2.3.3"
SE1 = "1.2.3.1.1"


def row(study: str = S1, pid: str = "MRN1", issuer: str | None = None, **more: Any) -> dj.Dataset:
    out: dj.Dataset = {
        dj.STUDY_UID: {"vr": "UI", "Value": [study]},
        dj.PATIENT_ID: {"vr": "LO", "Value": [pid]},
        dj.SERIES_UID: {"vr": "UI", "Value": [SE1]},
    }
    if issuer is not None:
        out[dj.ISSUER_OF_PATIENT_ID] = {"vr": "LO", "Value": [issuer]}
    for tag, (vr, value) in more.items():
        out[tag] = {"vr": vr, "Value": value}
    return out


def parse(*items: tuple[str, str], level: str = "studies") -> QidoRequest:
    return parse_qido(level, list(items))


def sent(req: QidoRequest) -> dict[str, str | None]:
    return {m.keyword: m.sent for m in req.matches}


class TestAttributes:
    def test_keyword_and_tag_forms_are_one_attribute(self) -> None:
        for key in ("PatientID", "00100020", "00100020".lower()):
            req = parse((key, "MRN1"))
            assert req.matches == (Match("00100020", "PatientID", "LO", ("MRN1",), "MRN1", True),)

    def test_to_tag(self) -> None:
        assert to_tag("StudyInstanceUID") == "0020000D"
        assert to_tag("0020000d") == "0020000D"
        assert to_tag("NoSuchKeyword") is None
        assert to_tag("0020000") is None
        assert to_tag("00081032.00080100") is None

    def test_unknown_word_is_invalid(self) -> None:
        with pytest.raises(InvalidRequest) as err:
            parse(("Foo", "bar"))
        assert not isinstance(err.value, UnsupportedSearch)

    def test_attribute_we_cannot_match_is_not_supported(self) -> None:
        with pytest.raises(UnsupportedSearch):
            parse(("InstitutionName", "X"))
        with pytest.raises(UnsupportedSearch):
            parse(("99991234", "1"))

    def test_sequence_paths_are_refused(self) -> None:
        with pytest.raises(InvalidRequest):
            parse(("00081032.00080100", "X"))

    def test_lower_level_attributes_refused_at_higher_levels(self) -> None:
        with pytest.raises(UnsupportedSearch):
            parse(("Modality", "CT"))
        with pytest.raises(UnsupportedSearch):
            parse(("SOPInstanceUID", S1), level="series")
        with pytest.raises(UnsupportedSearch):
            parse(("ModalitiesInStudy", "CT"), level="series")
        assert sent(parse(("Modality", "CT"), ("PatientID", "X"), level="instances")) == {
            "Modality": "CT",
            "PatientID": "X",
        }

    def test_parameter_names_are_case_sensitive(self) -> None:
        with pytest.raises(InvalidRequest):
            parse(("Limit", "3"))


class TestValues:
    def test_uid_lists_comma_and_repeated(self) -> None:
        req = parse(("StudyInstanceUID", f"{S1},{S2}"), ("0020000D", S3), ("StudyInstanceUID", S1))
        assert sent(req) == {"StudyInstanceUID": f"{S1},{S2},{S3}"}

    @pytest.mark.parametrize("value", ["1.2.*", "1.2.?", "01.2", "1.2.3 ", "abc", "1.2,", ",1.2", "1.2\\1.3", "1..2"])
    def test_bad_uids_are_400(self, value: str) -> None:
        with pytest.raises(InvalidRequest):
            parse(("StudyInstanceUID", value))

    def test_empty_value_is_universal_matching(self) -> None:
        (m,) = parse(("PatientID", "")).matches
        assert m.values == () and m.sent is None and m.exact and m.accepts(row(pid="anyone"))
        (m,) = parse(("PatientName", "*")).matches
        assert m.sent is None and m.accepts({})

    @pytest.mark.parametrize("value", ["20240101", "20240101-", "-20240101", "20240101-20241231"])
    def test_date_ranges(self, value: str) -> None:
        assert sent(parse(("StudyDate", value))) == {"StudyDate": value}

    @pytest.mark.parametrize("value", ["2024-01-01", "abc", "20241399", "2024010", "20240101--"])
    def test_bad_dates_are_400(self, value: str) -> None:
        with pytest.raises(InvalidRequest):
            parse(("StudyDate", value))

    def test_times(self) -> None:
        assert sent(parse(("StudyTime", "0930-1200"))) == {"StudyTime": "0930-1200"}
        with pytest.raises(InvalidRequest):
            parse(("StudyTime", "2500"))

    def test_integers(self) -> None:
        assert sent(parse(("SeriesNumber", "+3,04"), level="series")) == {"SeriesNumber": "3,4"}
        with pytest.raises(InvalidRequest):
            parse(("SeriesNumber", "3*"), level="series")

    def test_wildcards_are_kept_and_sent_raw(self) -> None:
        (m,) = parse(("PatientName", "Gre*^D?niel")).matches
        assert (m.sent, m.exact) == ("Gre*^D?niel", True)

    def test_unsafe_characters_are_widened_and_rechecked(self) -> None:
        (m,) = parse(("PatientName", "Müller^Jürgen")).matches
        assert (m.sent, m.exact) == ("M*ller^J*rgen", False)
        name = "00100010"
        assert m.accepts({name: {"vr": "PN", "Value": [{"Alphabetic": "MÜLLER^jürgen"}]}})
        assert not m.accepts({name: {"vr": "PN", "Value": [{"Alphabetic": "Mueller^Juergen"}]}})
        (m,) = parse(("StudyDescription", "CT head")).matches
        assert (m.sent, m.exact) == ("CT?head", False)
        assert not m.accepts({"00081030": {"vr": "LO", "Value": ["CT-head"]}})
        assert m.accepts({"00081030": {"vr": "LO", "Value": ["ct head"]}})

    def test_percent_and_ampersand_never_reach_the_pacs(self) -> None:
        (m,) = parse(("PatientID", "a&b=c%2A#")).matches
        assert m.sent == "a?b?c?2A?" and not m.exact
        QidoQuery.build("studies", {m.keyword: m.sent or ""})  # safe raw (its own checks)

    def test_a_list_with_a_wildcard_is_decided_here(self) -> None:
        (m,) = parse(("AccessionNumber", "A*,B")).matches
        assert m.sent is None and not m.exact
        assert m.accepts(row(**{"00080050": ("SH", ["Axx"])}))
        assert m.accepts(row(**{"00080050": ("SH", ["b"])}))
        assert not m.accepts(row(**{"00080050": ("SH", ["C"])}))
        assert sent(parse(("ModalitiesInStudy", "CT,MR"))) == {"ModalitiesInStudy": "CT,MR"}

    def test_widened_to_wildcards_only_is_not_sent(self) -> None:
        (m,) = parse(("PatientName", "山田")).matches
        assert m.sent is None and not m.exact

    @pytest.mark.parametrize("value", ["A\\B", "A\x00", "A,,B", "A,"])
    def test_backslash_control_and_empty_items_are_400(self, value: str) -> None:
        with pytest.raises(InvalidRequest):
            parse(("PatientID", value))

    def test_too_many_values(self) -> None:
        with pytest.raises(InvalidRequest):
            parse(("StudyInstanceUID", ",".join(f"1.2.{i}" for i in range(101))))


class TestReservedParameters:
    def test_includefield_list_repeated_keywords_tags_all(self) -> None:
        req = parse(("includefield", "00081030,StudyDescription"), ("includefield", "00080060"), level="series")
        assert req.fields == ("00080060", "00081030") and not req.all_fields
        req = parse(("includefield", "all"))
        assert req.all_fields and "00081030" in req.wanted_fields and "00100021" in req.wanted_fields

    @pytest.mark.parametrize("value", ["Nope", "00081032.00080100", "", "a,,b"])
    def test_bad_includefield(self, value: str) -> None:
        with pytest.raises(InvalidRequest):
            parse(("includefield", value))

    def test_paging_and_fuzzy(self) -> None:
        req = parse(("limit", "101"), ("offset", "0"), ("fuzzymatching", "false"))
        assert (req.limit, req.offset, req.fuzzy) == (101, 0, False)
        assert parse(("fuzzymatching", "true")).fuzzy

    @pytest.mark.parametrize(
        "items",
        [
            [("limit", "-1")],
            [("limit", "0")],
            [("limit", "%35")],
            [("limit", "1"), ("limit", "2")],
            [("offset", "x")],
            [("fuzzymatching", "yes")],
        ],
    )
    def test_bad_paging_is_400(self, items: list[tuple[str, str]]) -> None:
        with pytest.raises(InvalidRequest):
            parse_qido("studies", items)


MINE = (PatientKey("MRN1", None),)
MINE_ISSUED = (PatientKey("MRN1", "HOSP-A"),)
ROWS = [
    row(S1, "MRN1"),
    row(S2, "MRN2"),
    row(S3, "mrn1"),  # Orthanc matches PatientID case-insensitively (orthanc-qido.md TL;DR 2)
    row("1.2.3.4", "MRN1", "HOSP-B"),  # same PatientID, another issuer: another person
    row("1.2.3.5", "MRN10"),
]


def shown(plan: GatewayPlan, rows: list[dj.Dataset] = ROWS) -> list[str]:
    return [dj.text(r, dj.STUDY_UID) or "" for r in rows if plan.accepts(r)]


class TestCrossPatient:
    """Whatever the client writes, a patient-confined plan asks the PACS for the token's patient and passes no
    row of anyone else's (the PACS is assumed to ignore keys, so every row of the PACS is offered)."""

    @pytest.mark.parametrize(
        "items",
        [
            [],
            [("PatientID", "*")],
            [("PatientID", "MRN*")],
            [("PatientID", "MRN?")],
            [("PatientID", "")],
            [("00100020", "*")],
            [("00100020", "MRN2")],
            [("PatientID", "MRN2")],
            [("PatientID", "MRN1,MRN2")],
            [("PatientID", "MRN1"), ("PatientID", "MRN2")],
            [("PatientID", "mrn1")],
            [("PatientID", "MRN1%")],
            [("PatientID", "MRN1 ")],
            [("PatientID", "MRN1"), ("IssuerOfPatientID", "HOSP-B")],
            [("IssuerOfPatientID", "*")],
            [("StudyInstanceUID", f"{S1},{S2},{S3},1.2.3.4")],
            [("0020000D", S2)],
            [("PatientName", "*")],
        ],
    )
    @pytest.mark.parametrize("level", ["studies", "series", "instances"])
    def test_nothing_of_another_patient(self, items: list[tuple[str, str]], level: str) -> None:
        plan = plan_gateway(parse_qido(level, items), Scope(patients=MINE))
        assert plan.keys.get("PatientID") == "MRN1"
        assert set(shown(plan)) <= {S1}
        assert dj.PATIENT_ID in plan.fields and dj.ISSUER_OF_PATIENT_ID in plan.fields
        QidoQuery.build(level, plan.keys, fields=plan.fields)

    def test_own_studies_are_found(self) -> None:
        assert shown(plan_gateway(parse(), Scope(patients=MINE))) == [S1]
        assert shown(plan_gateway(parse(("PatientID", "MRN*")), Scope(patients=MINE))) == [S1]
        assert shown(plan_gateway(parse(("StudyInstanceUID", f"{S2},{S1}")), Scope(patients=MINE))) == [S1]

    def test_another_issuer(self) -> None:
        plan = plan_gateway(parse(), Scope(patients=MINE_ISSUED))
        assert plan.keys == {"PatientID": "MRN1", "IssuerOfPatientID": "HOSP-A"}
        rows = [row(S1, "MRN1", "HOSP-A"), row(S2, "MRN1", "HOSP-B"), row(S3, "MRN1")]
        assert shown(plan, rows) == [S1]
        assert plan.exact  # both keys exact: the PACS may page
        assert shown(plan_gateway(parse(("IssuerOfPatientID", "HOSP-B")), Scope(patients=MINE_ISSUED)), rows) == []

    def test_naming_another_patient_finds_nothing(self) -> None:
        plan = plan_gateway(parse(("PatientID", "MRN2")), Scope(patients=MINE))
        assert plan.keys["PatientID"] == "MRN1" and shown(plan, [row(S1, "MRN1")]) == []

    def test_patient_without_keys_finds_nothing(self) -> None:
        assert plan_gateway(parse(), Scope(patients=())).nothing

    def test_unusual_patient_id_is_widened_and_rechecked(self) -> None:
        plan = plan_gateway(parse(), Scope(patients=(PatientKey("MRN 1", None),)))
        assert plan.keys["PatientID"] == "MRN?1" and not plan.exact
        assert shown(plan, [row(S1, "MRN 1"), row(S2, "MRN-1")]) == [S1]

    def test_unconfined_sends_what_the_client_asked(self) -> None:
        plan = plan_gateway(parse(("PatientID", "MRN2")), Scope())
        assert plan.keys == {"PatientID": "MRN2"} and plan.exact and plan.checks == ()
        plan = plan_gateway(parse(("PatientID", "")), Scope())
        assert plan.keys == {} and plan.exact


class TestStudyScope:
    def test_capability_study_is_forced(self) -> None:
        plan = plan_gateway(parse(), Scope(study=S1))
        assert plan.keys == {"StudyInstanceUID": S1}
        assert shown(plan) == [S1]

    @pytest.mark.parametrize("value", [S2, f"{S2},{S3}"])
    def test_another_study_finds_nothing(self, value: str) -> None:
        assert plan_gateway(parse(("StudyInstanceUID", value)), Scope(study=S1)).nothing

    def test_a_list_holding_the_study_finds_it(self) -> None:
        plan = plan_gateway(parse(("StudyInstanceUID", f"{S2},{S1}")), Scope(study=S1))
        assert plan.keys == {"StudyInstanceUID": S1} and shown(plan) == [S1]

    def test_path_study_and_series(self) -> None:
        plan = plan_gateway(parse(level="instances"), Scope(), study=S1, series=SE1)
        assert plan.keys == {"StudyInstanceUID": S1, "SeriesInstanceUID": SE1}
        assert shown(plan) == [S1]
        assert plan_gateway(parse(("SeriesInstanceUID", "9.9"), level="instances"), Scope(), series=SE1).nothing

    def test_path_study_other_than_the_capability(self) -> None:
        assert plan_gateway(parse(level="series"), Scope(study=S1), study=S2).nothing

    def test_patient_and_capability_together(self) -> None:
        plan = plan_gateway(parse(("PatientID", "*")), Scope(patients=MINE, study=S2))
        assert plan.keys == {"StudyInstanceUID": S2, "PatientID": "MRN1"}
        assert shown(plan) == []
