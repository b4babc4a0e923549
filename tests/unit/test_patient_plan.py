"""Patient search: parsing with the Patient table, the study-level plan, and folding rows into patients."""

from __future__ import annotations

import dataclasses

import pytest

from app.errors import InvalidRequest, UnsupportedSearch
from app.fhir import patient_ids
from app.fhir.search import PatientKey, parse_search
from app.fhir.search_params import PATIENT
from app.planning.patient_plan import distinct_patients, plan_patients
from app.planning.plan import PlanContext, name_check
from tests.unit.helpers import SEARCH_CTX

CTX = PlanContext(accession_system=None, zone=None, prequery_limit=100)


def row(pid: str, *, issuer: str | None = None, name: str = "Doe^Jane", date: str = "20200101", **extra: str):
    r: dict = {
        "0020000D": {"vr": "UI", "Value": [f"1.2.{abs(hash((pid, issuer, date))) % 10**8}"]},
        "00100020": {"vr": "LO", "Value": [pid]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
        "00080020": {"vr": "DA", "Value": [date]},
    }
    if issuer:
        r["00100021"] = {"vr": "LO", "Value": [issuer]}
    for tag, value in extra.items():
        r[tag] = {"vr": "CS", "Value": [value]}
    return r


def parse(query: str, **kw):
    items = [tuple(p.split("=", 1)) for p in query.split("&") if p]
    return parse_search(items, SEARCH_CTX, PATIENT, **kw)


def plan_of(query: str):
    return plan_patients(parse(query), CTX)


def test_patient_table_parses_its_own_parameters_only():
    req = parse("family=Smi&given:exact=John&birthdate=ge1970&gender=female,male&identifier=MRN1")
    assert [(c.name, c.modifier, c.values) for c in req.criteria][:2] == [
        ("family", "", ("Smi",)),
        ("given", "exact", ("John",)),
    ]
    assert parse("started=2020").criteria == ()  # an ImagingStudy parameter, ignored here
    with pytest.raises(UnsupportedSearch):
        parse_search([("modality", "CT")], dataclasses.replace(SEARCH_CTX, strict=True), PATIENT)
    with pytest.raises(UnsupportedSearch):
        parse("name:text=x")
    with pytest.raises(InvalidRequest):
        parse("gender=f")


def test_id_and_identifier_become_patient_keys():
    pid = patient_ids.encode("MRN1", "HOSP-A")
    assert parse(f"_id={pid}").criteria[0].values == (PatientKey("MRN1", "HOSP-A"),)
    assert parse("_id=123").criteria[0].values == ()  # not one of ours: matches nothing
    assert parse("identifier=http://hospital-a.example.org/mrn|MRN1").criteria[0].values == (
        PatientKey("MRN1", "HOSP-A"),
    )
    p = plan_of(f"_id={pid}")
    assert p.study_keys == {"PatientID": "MRN1", "IssuerOfPatientID": "HOSP-A"}
    assert plan_of("_id=123").nothing


def test_qido_keys_for_birthdate_and_gender_names_only_checked():
    p = plan_of("birthdate=1970-01-01&gender=female,other&name=mül")
    # ±1 day: a date search value is read in the search zone (app.fhir.dates.qido_date_range).
    assert p.study_keys == {"PatientBirthDate": "19691231-19700102", "PatientSex": "F,O"}
    assert "PatientName" not in p.study_keys
    rows = [
        row("A", name="Müller^Jürgen", **{"00100030": "19700101", "00100040": "F"}),
        row("B", name="Muller^X", **{"00100030": "19700102", "00100040": "F"}),
        row("C", name="Müller^Y", **{"00100030": "19700101", "00100040": "M"}),
    ]
    assert [r["00100020"]["Value"][0] for r in rows if p.accepts(r)] == ["A"]


def test_unknown_gender_has_no_pacs_value_so_no_key():
    p = plan_of("gender=female,unknown")
    assert "PatientSex" not in p.study_keys
    assert p.accepts(row("A", **{"00100040": "F"}))
    assert not p.accepts(row("B", **{"00100040": "X"}))  # mapped to no gender: not "unknown" either
    assert plan_of("gender:missing=true").accepts(row("B", **{"00100040": "X"}))
    assert plan_of("gender:not=female").accepts(row("B"))


@pytest.mark.parametrize(
    ("mode", "part", "value", "name", "hit"),
    [
        ("", "name", "mul", "Müller^Jürgen", True),
        ("", "name", "jur", "Müller^Jürgen", True),
        ("", "name", "ller", "Müller^Jürgen", False),
        ("contains", "name", "ller", "Müller^Jürgen", True),
        ("exact", "name", "Müller", "Müller^Jürgen", True),
        ("exact", "name", "muller", "Müller^Jürgen", False),
        ("", "family", "jur", "Müller^Jürgen", False),
        ("", "given", "jur", "Müller^Jürgen", True),
        ("", "given", "ann", "Smith^Mary^Ann", True),  # the middle name is a given name
        ("", "name", "dr", "Smith^John^^Dr", True),  # prefix
        ("", "name", "john sm", "Smith^John", True),  # the whole text
        ("", "family", "山田", "Yamada^Tarou=山田^太郎=やまだ^たろう", True),
        ("", "name", "たろう", "Yamada^Tarou=山田^太郎=やまだ^たろう", True),
    ],
)
def test_name_check_modes(mode, part, value, name, hit):
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), name.split("="), strict=False))
    r = {"00100010": {"vr": "PN", "Value": [groups]}}
    assert name_check("00100010", [value], mode, part)(r) is hit


def test_distinct_patients_one_row_each_latest_study_wins_sorted_by_id():
    rows = [
        row("B", date="20200101", name="Old^Name"),
        row("A"),
        row("B", date="20220101", name="New^Name"),
        row("B", issuer="HOSP-A"),
        {"0020000D": {"vr": "UI", "Value": ["1.9"]}},  # no PatientID: belongs to no patient
    ]
    out = distinct_patients(rows)
    keys = [
        patient_ids.encode(r["00100020"]["Value"][0], (r.get("00100021") or {}).get("Value", [None])[0]) for r in out
    ]
    assert keys == sorted(keys) and len(keys) == 3
    (b,) = [r for r in out if r["00100020"]["Value"] == ["B"] and "00100021" not in r]
    assert b["00100010"]["Value"][0]["Alphabetic"] == "New^Name"
