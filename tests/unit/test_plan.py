"""app.planning.plan: SearchRequest → QIDO study keys, pre-queries and the exact re-check predicates.

The PACS is asked for a superset (Orthanc matches case-insensitively, and unsafe characters are sent as
wildcards); every widened key must come with a predicate that rejects the near misses the PACS lets through.
"""

from __future__ import annotations

import dataclasses
from zoneinfo import ZoneInfo

import pytest

from app.dicom import dicom_json as dj
from app.dicom.qido import QidoQuery
from app.errors import UnsupportedSearch
from app.fhir import patient_ids
from app.fhir.search import SearchContext, SearchRequest, parse_search
from app.planning.plan import Plan, PlanContext, Prequery, plan
from tests.unit.helpers import SEARCH_CTX

BERLIN = ZoneInfo("Europe/Berlin")
CTX = PlanContext(accession_system=None, zone=None, prequery_limit=2000)
HOSP_A = "http://hospital-a.example.org/mrn"
STUDY = "1.2.826.0.1.3680043.8.498.1"


def request(*items: tuple[str, str], ctx: SearchContext = SEARCH_CTX) -> SearchRequest:
    return parse_search(list(items), ctx)


def make_plan(*items: tuple[str, str], ctx: PlanContext = CTX, search_ctx: SearchContext = SEARCH_CTX) -> Plan:
    return plan(request(*items, ctx=search_ctx), ctx)


def row(
    uid: str = STUDY,
    *,
    pid: str | None = None,
    issuer: str | None = None,
    accession: str | None = None,
    modalities: tuple[str, ...] = (),
    da: str | None = None,
    tm: str | None = None,
    offset: str | None = None,
    **extra: str,
) -> dj.Dataset:
    """A study-level QIDO row in DICOM JSON."""
    ds: dj.Dataset = {dj.STUDY_UID: {"vr": "UI", "Value": [uid]}}
    for tag, vr, value in [
        (dj.PATIENT_ID, "LO", pid),
        (dj.ISSUER_OF_PATIENT_ID, "LO", issuer),
        (dj.ACCESSION, "SH", accession),
        (dj.STUDY_DATE, "DA", da),
        (dj.STUDY_TIME, "TM", tm),
        (dj.TIMEZONE_OFFSET, "SH", offset),
    ]:
        if value is not None:
            ds[tag] = {"vr": vr, "Value": [value]}
    if modalities:
        ds[dj.MODALITIES_IN_STUDY] = {"vr": "CS", "Value": list(modalities)}
    for tag, value in extra.items():
        ds[tag] = {"vr": "UI", "Value": [value]}
    return ds


def escape(value: str) -> str:
    """FHIR search escaping (search.html#escaping)."""
    for ch in "\\,|$":
        value = value.replace(ch, "\\" + ch)
    return value


class TestStudyKeys:
    def test_empty_search_asks_for_everything_and_checks_nothing(self):
        assert make_plan() == Plan()
        assert Plan().accepts({})

    def test_patient_identifier_with_issuer(self):
        p = make_plan(("patient.identifier", f"{HOSP_A}|MRN0100"))
        assert (p.nothing, p.study_keys, p.study_uids, p.prequeries) == (
            False,
            {"PatientID": "MRN0100", "IssuerOfPatientID": "HOSP-A"},
            None,
            (),
        )
        assert len(p.checks) == 1

    def test_patient_reference_gives_the_same_keys(self):
        ref = f"Patient/{patient_ids.encode('MRN0100', 'HOSP-A')}"
        keys = {"PatientID": "MRN0100", "IssuerOfPatientID": "HOSP-A"}
        assert make_plan(("patient", ref)).study_keys == keys
        assert make_plan(("subject", ref)).study_keys == keys

    def test_patient_without_issuer_or_with_any_issuer_sends_only_patient_id(self):
        assert make_plan(("patient.identifier", "urn:x-imaging-facade:patient-id|MRN0100")).study_keys == {
            "PatientID": "MRN0100"
        }
        assert make_plan(("patient.identifier", "MRN0100")).study_keys == {"PatientID": "MRN0100"}

    def test_patient_or_list_of_exact_values_is_a_qido_list_without_issuer(self):
        p = make_plan(("patient.identifier", f"MRN1,{HOSP_A}|MRN2"))
        assert p.study_keys == {"PatientID": "MRN1,MRN2"}

    def test_non_ascii_issuer_is_sent_as_a_wildcard_pattern(self):
        system = "urn:x-imaging-facade:issuer:" + "Klinikum%20S%C3%BCd"
        p = make_plan(("patient.identifier", f"{system}|MRN0100"))
        assert p.study_keys == {"PatientID": "MRN0100", "IssuerOfPatientID": "Klinikum?S*d"}
        assert p.accepts(row(pid="MRN0100", issuer="Klinikum Süd"))
        assert not p.accepts(row(pid="MRN0100", issuer="Klinikum-Sued"))

    def test_issuer_that_is_all_wildcards_is_not_sent(self):
        p = make_plan(("patient.identifier", "urn:x-imaging-facade:issuer:%2A|MRN0100"))
        assert p.study_keys == {"PatientID": "MRN0100"}
        assert p.accepts(row(pid="MRN0100", issuer="*"))
        assert not p.accepts(row(pid="MRN0100", issuer="X"))

    def test_started_gives_a_widened_study_date_range(self):
        assert make_plan(("started", "2020-05-01")).study_keys == {"StudyDate": "20200430-20200502"}
        assert make_plan(("started", "ge2020-05-01"), ("started", "le2020-05-31")).study_keys == {
            "StudyDate": "20200430-20200601"
        }

    def test_started_before_year_1000(self):
        assert make_plan(("started", "0999")).study_keys == {"StudyDate": "09981231-10000101"}

    def test_started_ne_sends_no_range_but_still_checks(self):
        p = make_plan(("started", "ne2020"))
        assert p.study_keys == {}
        assert len(p.checks) == 1
        assert p.accepts(row(da="20190101"))
        assert not p.accepts(row(da="20200101"))

    def test_modalities_in_study_list(self):
        p = make_plan(("modality", "MR,CT,MR"), ("modality", "US"))
        assert p.study_keys == {"ModalitiesInStudy": "CT,MR"}
        assert len(p.checks) == 2

    def test_accession_number(self):
        assert make_plan(("identifier", "ACC-0001")).study_keys == {"AccessionNumber": "ACC-0001"}
        assert make_plan(("identifier", "ACC1,ACC2")).study_keys == {"AccessionNumber": "ACC1,ACC2"}

    def test_study_uids(self):
        p = make_plan(("identifier", "urn:dicom:uid|urn:oid:1.2.4,urn:oid:1.2.3"))
        assert (p.study_keys, p.study_uids, p.checks) == ({}, ("1.2.3", "1.2.4"), ())
        assert make_plan(("_id", "1.2.5,1.2.3")).study_uids == ("1.2.3", "1.2.5")

    def test_study_uid_constraints_intersect(self):
        p = make_plan(("_id", "1.2.3,1.2.4"), ("identifier", "urn:oid:1.2.4,urn:oid:1.2.5"), ("_id", "1.2.4,1.2.9"))
        assert p.study_uids == ("1.2.4",)

    def test_all_together(self):
        p = make_plan(
            ("patient.identifier", f"{HOSP_A}|MRN0100"),
            ("started", "2020"),
            ("modality", "CT"),
            ("identifier", "ACC-1"),
            ("status", "available"),
        )
        assert p.study_keys == {
            "AccessionNumber": "ACC-1",
            "PatientID": "MRN0100",
            "IssuerOfPatientID": "HOSP-A",
            "StudyDate": "20191231-20210101",
            "ModalitiesInStudy": "CT",
        }
        assert len(p.checks) == 4  # accession, patient, date, modality; status needs none
        good = row(pid="MRN0100", issuer="HOSP-A", accession="ACC-1", modalities=("CT", "SR"), da="20200615")
        assert p.accepts(good)
        assert not p.accepts({**good, **row(da="20210101")})
        # Every key is safe to send raw.
        QidoQuery.build("studies", p.study_keys)

    def test_status_available_adds_nothing(self):
        assert make_plan(("status", "available")) == Plan()
        assert make_plan(("status", "available,cancelled")) == Plan()

    def test_study_uid_or_accession_in_one_parameter_is_unsupported(self):
        with pytest.raises(UnsupportedSearch):
            make_plan(("identifier", "urn:oid:1.2.3,ACC"))


class TestNothing:
    @pytest.mark.parametrize(
        "items",
        [
            [("status", "cancelled")],
            [("status", "available"), ("status", "cancelled")],
            [("modality", "http://loinc.org|CT")],
            [("patient", "Device/x")],
            [("patient", "https://other.example.org/Patient/p123")],
            [("identifier", "urn:dicom:uid|1.2.3")],
            [("_id", "1.2.3"), ("_id", "1.2.4")],
            [("_id", "1.2.3"), ("identifier", "urn:dicom:uid|urn:oid:1.2.4")],
            [("started", "le2019-06-30"), ("started", "ge2021-01-01")],
            [("bodysite", "http://snomed.info/sct|1")],
            [("series", "not-a-uid")],
            [("patient.identifier", "http://unknown.example.org|MRN")],
        ],
    )
    def test_searches_that_cannot_match_never_reach_the_pacs(self, items):
        assert make_plan(*items) == Plan(nothing=True)


# Values with characters QIDO cannot carry raw (or that are wildcards there): the key may be widened, but
# never to universal matching, and the predicate must then tell the real match from the near misses.
UNSAFE = [
    "MRN 0100",
    "MRN,0100",
    "MRN\\0100",
    "MRN*",
    "MRN?0100",
    "Müller",
    "山田太郎",
    "a&b=c",
    "x%2Ay",
    "#1",
    "*",
    "?",
    "**",
    "ü",
    "a|b",
    "A$B",
    "O'Brien",
    "a/b",
    "x^y",
]


def near_misses(value: str) -> list[str]:
    out = {
        value.swapcase(),
        value + "X",
        "X" + value,
        "".join("_" if not c.isalnum() else c for c in value),
        value.replace("ü", "u"),
        value.replace("0", "O"),
    }
    out.discard(value)
    return sorted(out)


class TestUnsafeValues:
    @pytest.mark.parametrize("value", UNSAFE)
    def test_accession(self, value):
        p = make_plan(("identifier", escape(value)))
        assert p.nothing is False
        sent = p.study_keys.get("AccessionNumber")
        assert sent is None or sent.strip("*?"), sent  # never universal matching
        QidoQuery.build("studies", p.study_keys)  # safe raw
        assert p.checks
        assert p.accepts(row(accession=value))
        for miss in near_misses(value):
            assert not p.accepts(row(accession=miss)), miss
        assert not p.accepts(row())

    @pytest.mark.parametrize("value", UNSAFE)
    def test_patient_identifier(self, value):
        p = make_plan(("patient.identifier", f"{HOSP_A}|{escape(value)}"))
        sent = p.study_keys.get("PatientID")
        assert sent is None or sent.strip("*?"), sent
        assert p.study_keys.get("IssuerOfPatientID") == "HOSP-A"
        QidoQuery.build("studies", p.study_keys)
        assert p.accepts(row(pid=value, issuer="HOSP-A"))
        assert not p.accepts(row(pid=value, issuer="HOSP-B"))
        assert not p.accepts(row(pid=value))
        for miss in near_misses(value):
            assert not p.accepts(row(pid=miss, issuer="HOSP-A")), miss

    @pytest.mark.parametrize("value", UNSAFE)
    def test_patient_reference(self, value):
        p = make_plan(("patient", "Patient/" + patient_ids.encode(value, "HOSP-A")))
        sent = p.study_keys.get("PatientID")
        assert sent is None or sent.strip("*?"), sent
        QidoQuery.build("studies", p.study_keys)
        assert p.accepts(row(pid=value, issuer="HOSP-A"))
        for miss in near_misses(value):
            assert not p.accepts(row(pid=miss, issuer="HOSP-A")), miss

    def test_widened_values_are_wildcards_in_place(self):
        assert make_plan(("patient.identifier", "MRN 0100")).study_keys == {"PatientID": "MRN?0100"}
        assert make_plan(("patient.identifier", "MRN\\,0100")).study_keys == {"PatientID": "MRN?0100"}
        assert make_plan(("patient.identifier", "Müller")).study_keys == {"PatientID": "M*ller"}
        assert make_plan(("identifier", "AC*")).study_keys == {"AccessionNumber": "AC?"}

    @pytest.mark.parametrize("value", ["*", "?", "**", " ", "ü", "山田"])
    def test_all_wildcard_patterns_are_not_sent(self, value):
        assert make_plan(("patient.identifier", escape(value))).study_keys == {}
        assert make_plan(("identifier", escape(value))).study_keys == {}

    def test_an_or_list_with_a_wildcard_is_not_sent_as_a_list(self):
        # "A1,B?2" would be read by the PACS as a list containing a pattern: send nothing, check everything.
        p = make_plan(("patient.identifier", "A1,B 2"))
        assert p.study_keys == {}
        assert p.accepts(row(pid="A1")) and p.accepts(row(pid="B 2"))
        assert not p.accepts(row(pid="B_2")) and not p.accepts(row(pid="a1"))

    @pytest.mark.parametrize(
        "items", [[("modality", "CT ")], [("modality", "C T")], [("bodysite", "CHEST ")], [("bodysite", "LEFT HAND")]]
    )
    def test_coded_values_with_spaces_are_never_sent_raw(self, items):
        p = make_plan(*items)
        QidoQuery.build("studies", p.study_keys)
        for pre in p.prequeries:
            assert " " not in pre.query.path


class TestPatientPredicate:
    @pytest.mark.parametrize(
        ("pid", "issuer", "ok"),
        [
            ("MRN0100", "HOSP-A", True),
            ("mrn0100", "HOSP-A", False),  # Orthanc matches case-insensitively; FHIR tokens do not
            ("MRN0100", "hosp-a", False),
            ("MRN0100", "HOSP-B", False),
            ("MRN0100", None, False),
            ("MRN01000", "HOSP-A", False),
            (None, "HOSP-A", False),
        ],
    )
    def test_with_issuer(self, pid, issuer, ok):
        p = make_plan(("patient.identifier", f"{HOSP_A}|MRN0100"))
        assert p.accepts(row(pid=pid, issuer=issuer)) is ok

    @pytest.mark.parametrize(("issuer", "ok"), [(None, True), ("HOSP-A", False), ("", True)])
    def test_default_system_means_no_issuer(self, issuer, ok):
        p = make_plan(("patient.identifier", "urn:x-imaging-facade:patient-id|MRN0100"))
        # An empty IssuerOfPatientID reads as absent (DICOM JSON sends it without a Value).
        r = row(pid="MRN0100") if issuer == "" else row(pid="MRN0100", issuer=issuer)
        if issuer == "":
            r[dj.ISSUER_OF_PATIENT_ID] = {"vr": "LO"}
        assert p.accepts(r) is ok

    @pytest.mark.parametrize("issuer", [None, "HOSP-A", "HOSP-B"])
    def test_any_issuer(self, issuer):
        p = make_plan(("patient.identifier", "MRN0100"))
        assert p.accepts(row(pid="MRN0100", issuer=issuer))
        assert not p.accepts(row(pid="MRN0101", issuer=issuer))

    def test_two_patient_criteria_must_both_hold(self):
        p = make_plan(("patient.identifier", "MRN0100"), ("patient.identifier", f"{HOSP_A}|MRN0100"))
        assert p.study_keys == {"PatientID": "MRN0100"}
        assert p.accepts(row(pid="MRN0100", issuer="HOSP-A"))
        assert not p.accepts(row(pid="MRN0100", issuer="HOSP-B"))

    def test_patient_and_subject_are_anded(self):
        p = make_plan(("patient.identifier", "MRN1"), ("subject.identifier", "MRN2"))
        assert not p.accepts(row(pid="MRN1")) and not p.accepts(row(pid="MRN2"))


class TestAccessionPredicate:
    @pytest.mark.parametrize(
        ("raw", "accession", "ok"),
        [
            ("ACC-1", "ACC-1", True),
            ("ACC-1", "acc-1", False),
            ("ACC-1", "ACC-10", False),
            ("ACC-1", None, False),
            ("|ACC-1", "ACC-1", True),  # explicitly no system: we emit none
            ("http://hosp/acc|ACC-1", "ACC-1", False),  # a system we never emit
            ("ACC-1,ACC-2", "ACC-2", True),
        ],
    )
    def test_without_configured_system(self, raw, accession, ok):
        assert make_plan(("identifier", raw)).accepts(row(accession=accession)) is ok

    @pytest.mark.parametrize(
        ("raw", "ok"),
        [("ACC-1", True), ("http://hosp/acc|ACC-1", True), ("|ACC-1", False), ("http://other|ACC-1", False)],
    )
    def test_with_configured_system(self, raw, ok):
        ctx = dataclasses.replace(CTX, accession_system="http://hosp/acc")
        assert make_plan(("identifier", raw), ctx=ctx).accepts(row(accession="ACC-1")) is ok


class TestDatePredicate:
    @pytest.mark.parametrize(
        ("da", "tm", "offset", "ok"),
        [
            ("20200501", None, None, True),
            ("20200430", None, None, False),  # inside the widened QIDO range, outside the FHIR day
            ("20200502", None, None, False),
            ("20200430", "233000", "+0000", False),
            ("20200502", "010000", "+0200", True),  # 2020-05-01T23:00Z
            ("20200501", "013000", "+0200", False),  # 2020-04-30T23:30Z
            (None, None, None, False),  # no date: matches no date search
            ("2020-05-01", None, None, False),  # not DICOM DA
        ],
    )
    def test_exact_semantics_in_utc(self, da, tm, offset, ok):
        p = make_plan(("started", "2020-05-01"))
        assert p.accepts(row(da=da, tm=tm, offset=offset)) is ok

    def test_pacs_zone_for_rows_without_offset(self):
        ctx = dataclasses.replace(CTX, zone=BERLIN)
        search_ctx = dataclasses.replace(SEARCH_CTX, search_zone=BERLIN)
        p = make_plan(("started", "2020-05-01T00:30:00"), ctx=ctx, search_ctx=search_ctx)
        assert p.study_keys == {"StudyDate": "20200429-20200501"}
        assert p.accepts(row(da="20200501", tm="003000"))
        assert not p.accepts(row(da="20200501", tm="003000", offset="+0000"))

    def test_and_of_or_groups(self):
        p = make_plan(("started", "2019,2021"), ("started", "lt2021-06"))
        assert p.accepts(row(da="20190505"))
        assert p.accepts(row(da="20210505"))
        assert not p.accepts(row(da="20210705"))
        assert not p.accepts(row(da="20200505"))


class TestModalityPredicate:
    @pytest.mark.parametrize(
        ("modalities", "ok"),
        [(("MR",), True), (("CT", "MR", "SR"), True), (("CT", "KO"), False), (("mr",), False), ((), False)],
    )
    def test_any_of_the_codes(self, modalities, ok):
        assert make_plan(("modality", "MR,US")).accepts(row(modalities=modalities)) is ok

    def test_each_repetition_must_hold(self):
        p = make_plan(("modality", "CT"), ("modality", "SR"))
        assert p.study_keys == {"ModalitiesInStudy": "CT"}
        assert p.accepts(row(modalities=("CT", "SR")))
        assert not p.accepts(row(modalities=("CT",)))


class TestPrequeries:
    def test_series(self):
        p = make_plan(("series", "1.2.3,1.2.2,1.2.3"))
        assert p.prequeries == (
            Prequery(
                QidoQuery("series", (("SeriesInstanceUID", "1.2.2,1.2.3"), ("limit", "2001"))),
                dj.SERIES_UID,
                frozenset({"1.2.2", "1.2.3"}),
            ),
        )
        assert p.study_keys == {} and p.study_uids is None

    def test_instance_and_dicom_class(self):
        p = make_plan(("instance", "1.2.3.4"), ("dicom-class", "urn:oid:1.2.840.10008.5.1.4.1.1.2"))
        assert [(q.query, q.attribute, q.accepted) for q in p.prequeries] == [
            (
                QidoQuery("instances", (("SOPInstanceUID", "1.2.3.4"), ("limit", "2001"))),
                dj.SOP_INSTANCE_UID,
                frozenset({"1.2.3.4"}),
            ),
            (
                QidoQuery("instances", (("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"), ("limit", "2001"))),
                dj.SOP_CLASS_UID,
                frozenset({"1.2.840.10008.5.1.4.1.1.2"}),
            ),
        ]

    def test_bodysite_asks_for_the_attribute_it_checks(self):
        p = make_plan(("bodysite", "http://snomed.info/sct|816094009,ABDOMEN"))
        assert p.prequeries == (
            Prequery(
                QidoQuery(
                    "series", (("BodyPartExamined", "ABDOMEN,CHEST"), ("includefield", "00180015"), ("limit", "2001"))
                ),
                dj.BODY_PART,
                frozenset({"ABDOMEN", "CHEST"}),
            ),
        )

    def test_study_keys_and_uids_narrow_the_prequery_but_not_modalities(self):
        p = make_plan(
            ("patient.identifier", f"{HOSP_A}|MRN0100"),
            ("modality", "CT"),
            ("started", "2020-05-01"),
            ("_id", "1.2.9,1.2.8"),
            ("series", "1.2.3"),
        )
        assert p.prequeries[0].query == QidoQuery(
            "series",
            (
                ("IssuerOfPatientID", "HOSP-A"),
                ("PatientID", "MRN0100"),
                ("SeriesInstanceUID", "1.2.3"),
                ("StudyDate", "20200430-20200502"),
                ("StudyInstanceUID", "1.2.8,1.2.9"),
                ("limit", "2001"),
            ),
        )
        assert p.study_uids == ("1.2.8", "1.2.9")

    def test_repeated_prequery_parameters_are_each_asked(self):
        p = make_plan(("series", "1.2.3"), ("series", "1.2.4"))
        assert [q.accepted for q in p.prequeries] == [frozenset({"1.2.3"}), frozenset({"1.2.4"})]

    def test_prequery_limit_is_one_more_than_allowed(self):
        p = make_plan(("series", "1.2.3"), ctx=dataclasses.replace(CTX, prequery_limit=10))
        assert ("limit", "11") in p.prequeries[0].query.params

    def test_study_uids_of_the_rows_that_really_match(self):
        p = make_plan(("bodysite", "CHEST"))
        rows = [
            {dj.STUDY_UID: {"vr": "UI", "Value": ["1.1"]}, dj.BODY_PART: {"vr": "CS", "Value": ["CHEST"]}},
            {dj.STUDY_UID: {"vr": "UI", "Value": ["1.2"]}, dj.BODY_PART: {"vr": "CS", "Value": ["chest"]}},
            {dj.STUDY_UID: {"vr": "UI", "Value": ["1.3"]}},
            {dj.BODY_PART: {"vr": "CS", "Value": ["CHEST"]}},  # no study UID
            {dj.STUDY_UID: {"vr": "UI", "Value": ["1.4"]}, dj.BODY_PART: {"vr": "CS", "Value": ["CHEST "]}},
            {dj.STUDY_UID: {"vr": "UI", "Value": ["1.1"]}, dj.BODY_PART: {"vr": "CS", "Value": ["CHEST"]}},
        ]
        assert p.prequeries[0].study_uids(rows) == ["1.1", "1.4", "1.1"]

    def test_series_uid_prequery_rejects_other_series(self):
        p = make_plan(("series", "1.2.3"))
        rows = [row("9.1", **{dj.SERIES_UID: "1.2.3"}), row("9.2", **{dj.SERIES_UID: "1.2.30"})]
        assert p.prequeries[0].study_uids(rows) == ["9.1"]
