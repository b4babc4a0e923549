"""app.fhir.patient_ids: reversible Patient ids from (PatientID, IssuerOfPatientID), and identifier systems."""

from __future__ import annotations

import base64
import re

import pytest

from app.fhir import patient_ids

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # R4 datatypes.html#id
DEFAULT = "urn:x-imaging-facade:patient-id"
PREFIX = "urn:x-imaging-facade:issuer:"
TABLE = {"HOSP-A": "http://hospital-a.example.org/mrn"}


def b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


class TestEncodeDecode:
    @pytest.mark.parametrize(
        ("patient_id", "issuer"),
        [
            ("MRN0100", None),
            ("MRN0100", "HOSP-A"),
            ("Müller-7", "Klinikum Süd"),
            ("山田", "病院"),
            ("a/b c,d\\e|f*g", "x^y=z"),
            ("", None),
            ("", "HOSP-A"),
            ("x" * 39, None),  # the longest reversible id: 64 characters
        ],
    )
    def test_round_trip(self, patient_id, issuer):
        fhir_id = patient_ids.encode(patient_id, issuer)
        assert FHIR_ID.fullmatch(fhir_id)
        assert patient_ids.decode(fhir_id) == (patient_id, issuer)

    def test_known_values(self):
        assert patient_ids.encode("MRN0100", None) == "p" + b32(b"MRN0100") == "pjvje4mbrgaya"
        assert patient_ids.encode("MRN0100", "HOSP-A") == "p" + b32(b"MRN0100\x00HOSP-A")

    def test_empty_issuer_is_no_issuer(self):
        assert patient_ids.encode("MRN0100", "") == patient_ids.encode("MRN0100", None)
        assert patient_ids.decode(patient_ids.encode("MRN0100", "")) == ("MRN0100", None)

    def test_same_patient_id_with_different_issuers_gives_distinct_ids(self):
        ids = {patient_ids.encode("MRN0100", issuer) for issuer in (None, "HOSP-A", "HOSP-B", "1.2.3")}
        assert len(ids) == 4

    def test_ids_are_deterministic_and_case_sensitive_inputs_differ(self):
        assert patient_ids.encode("MRN0100", "HOSP-A") == patient_ids.encode("MRN0100", "HOSP-A")
        assert patient_ids.encode("mrn0100", "HOSP-A") != patient_ids.encode("MRN0100", "HOSP-A")

    @pytest.mark.parametrize(("patient_id", "issuer"), [("x" * 40, None), ("MRN" * 20, "ISSUER" * 10)])
    def test_long_pairs_get_a_hash_id_that_is_not_decodable(self, patient_id, issuer):
        fhir_id = patient_ids.encode(patient_id, issuer)
        assert fhir_id.startswith("h") and len(fhir_id) == 41
        assert FHIR_ID.fullmatch(fhir_id)
        assert patient_ids.decode(fhir_id) is None
        assert fhir_id != patient_ids.encode(patient_id + "x", issuer)

    @pytest.mark.parametrize(
        "fhir_id",
        [
            "pJVJE4MBRGAYA",  # upper case
            "PJVJE4MBRGAYA",
            "pjvje4mbrgaya=",  # padding
            "pjvje4mbrgaya===",
            "pjvje4mbrgayb",  # the same bytes with non-zero trailing bits
            "pjvje4mbrgay",  # truncated
            "p0",  # not base32
            "p1",
            "p8a",
            "jvje4mbrgaya",  # no kind prefix
            "xjvje4mbrgaya",
            "h" + "0" * 40,
            "p" + b32(b"\xff\xfe"),  # not UTF-8
            "p" + "a" * 64,  # longer than a FHIR id
            "",
            "p jvje4mbrgaya",
        ],
    )
    def test_non_canonical_spellings_are_rejected(self, fhir_id):
        assert patient_ids.decode(fhir_id) is None

    def test_trailing_nul_is_not_the_canonical_spelling_of_no_issuer(self):
        assert patient_ids.decode("p" + b32(b"MRN0100\x00")) is None


class TestSystems:
    @pytest.mark.parametrize(
        ("issuer", "system"),
        [
            (None, DEFAULT),
            ("HOSP-A", "http://hospital-a.example.org/mrn"),
            ("1.2.3.4", "urn:oid:1.2.3.4"),
            ("HOSP B/ü", PREFIX + "HOSP%20B%2F%C3%BC"),
            ("HOSP-B", PREFIX + "HOSP-B"),
        ],
    )
    def test_system_for(self, issuer, system):
        assert patient_ids.system_for(issuer, default=DEFAULT, prefix=PREFIX, table=TABLE) == system

    @pytest.mark.parametrize(
        "issuer", [None, "HOSP-A", "1.2.3.4", "HOSP B/ü", "HOSP-B", "urn:oid:1.2", "%41", "1.2.x", "1"]
    )
    def test_issuer_for_inverts_system_for(self, issuer):
        system = patient_ids.system_for(issuer, default=DEFAULT, prefix=PREFIX, table=TABLE)
        expected = patient_ids.NO_ISSUER if issuer is None else issuer
        assert patient_ids.issuer_for(system, default=DEFAULT, prefix=PREFIX, table=TABLE) == expected

    @pytest.mark.parametrize(
        "system",
        [
            "http://unknown.example.org/mrn",
            PREFIX,  # the prefix alone
            PREFIX + "HOSP-A",  # HOSP-A is emitted with its configured system, never this one
            PREFIX + "1.2.3",  # OIDs are emitted as urn:oid:
            "urn:oid:1.2.x",
            "urn:oid:",
            "",
        ],
    )
    def test_issuer_for_systems_we_never_emit_is_none(self, system):
        assert patient_ids.issuer_for(system, default=DEFAULT, prefix=PREFIX, table=TABLE) is None

    def test_oid_in_the_table_is_found_by_its_table_system_only(self):
        table = {"1.2.3": "http://oid-issuer.example.org"}
        assert (
            patient_ids.issuer_for("http://oid-issuer.example.org", default=DEFAULT, prefix=PREFIX, table=table)
            == "1.2.3"
        )
        assert patient_ids.issuer_for("urn:oid:1.2.3", default=DEFAULT, prefix=PREFIX, table=table) is None
