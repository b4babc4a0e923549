"""app.fhir.selection_ids: "group k of KOS <SOP Instance UID>" ↔ a FHIR id, reversibly.

Categories:
- properties (hypothesis): every valid UID (PS3.5 §9.1) and k in 0..999 round-trips into a valid FHIR id; any
  digits-and-dots string does too; any string decode accepts is the one canonical spelling encode makes;
- worst cases for length; hand-picked non-canonical spellings; the hashed form for UIDs that are not UIDs.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from app.fhir.selection_ids import decode, encode

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # R4/R5 datatypes.html#id
ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-."


@st.composite
def uids(draw: st.DrawFn) -> str:
    """Valid DICOM UIDs (PS3.5 §9.1): components of digits, no leading zero except the component "0" itself,
    separated by dots, at most 64 characters."""
    component = st.one_of(st.just("0"), st.from_regex(r"[1-9][0-9]{0,38}", fullmatch=True))
    parts = [draw(component)]
    while draw(st.booleans()):
        nxt = draw(component)
        if len(".".join([*parts, nxt])) > 64:
            break
        parts.append(nxt)
    return ".".join(parts)


ks = st.integers(min_value=0, max_value=999)


class TestRoundTrip:
    @given(uids(), ks)
    @example("1.2.840.10008.5.1.4.1.1.88.59", 0)
    @example("0", 0)
    @example("0.0", 999)
    @example("1." + "9" * 62, 999)
    def test_valid_uids(self, uid: str, k: int) -> None:
        fhir_id = encode(uid, k)
        assert FHIR_ID.fullmatch(fhir_id), fhir_id
        assert decode(fhir_id) == (uid, k)

    @given(st.text(alphabet="0123456789.", min_size=1, max_size=64), ks)
    @example("0001.00", 7)  # leading zeros survive (the sentinel digit)
    @example("." * 64, 999)  # the largest base-11 value: the longest id
    @example("....", 0)
    def test_any_digits_and_dots(self, uid: str, k: int) -> None:
        """Non-conformant UIDs seen in the wild (leading zeros, empty components) still round-trip."""
        fhir_id = encode(uid, k)
        assert len(fhir_id) <= 64
        assert decode(fhir_id) == (uid, k)

    @given(st.text(alphabet=ID_ALPHABET, min_size=1, max_size=64))
    @example("1-0")
    @example("01-0")
    def test_decode_accepts_only_canonical_spellings(self, fhir_id: str) -> None:
        decoded = decode(fhir_id)
        if decoded is not None:
            assert encode(*decoded) == fhir_id

    @given(uids(), uids(), ks, ks)
    def test_distinct_groups_get_distinct_ids(self, a: str, b: str, j: int, k: int) -> None:
        if (a, j) != (b, k):
            assert encode(a, j) != encode(b, k)


class TestExamples:
    def test_longest_uid_fits_with_room(self) -> None:
        # 11^65 < 62^38: a 64-character UID takes at most 38 characters, so even k = 10^20 fits in 64.
        assert len(encode("." * 64, 0).split("-")[0]) <= 38
        assert len(encode("9" * 64, 10**20)) <= 64

    def test_k_is_plain_decimal(self) -> None:
        assert encode("1.2.3", 0).endswith("-0")
        assert encode("1.2.3", 42).endswith("-42")
        assert encode("1.2.3", 0).split("-")[0] == encode("1.2.3", 42).split("-")[0]

    @pytest.mark.parametrize(
        "fhir_id",
        [
            "",
            "-0",
            "abc",  # no group number
            "abc-",
            "abc-01",  # leading zero in k
            "abc--1",
            "a-b-1",
            "0abc-1",  # leading zero digit in the base-62 part
            "ab.c-1",
            "abc-1.",
            "2-0",  # 2 in base 11 is "2": no sentinel 1 in front
            "1-0",  # the sentinel alone: an empty UID
            "z" * 62 + "-0",  # far more than 64 base-11 digits
            "a" * 70,
        ],
    )
    def test_rejected(self, fhir_id: str) -> None:
        assert decode(fhir_id) is None

    def test_single_zero_uid(self) -> None:
        assert encode("0", 0) == "B-0"  # 1·11 + 0 = 11 = "B" in base 62
        assert decode("B-0") == ("0", 0)

    def test_negative_k(self) -> None:
        with pytest.raises(ValueError):
            encode("1.2.3", -1)


class TestHashed:
    @pytest.mark.parametrize("uid", ["1.2.3a", "", "1.2.3 ", "Ⅻ", "1." + "2" * 70])
    def test_not_a_uid_gets_a_stable_opaque_id(self, uid: str) -> None:
        fhir_id = encode(uid, 3)
        assert FHIR_ID.fullmatch(fhir_id)
        assert fhir_id == encode(uid, 3)
        assert fhir_id != encode(uid, 4)
        assert fhir_id.startswith("x.")
        assert decode(fhir_id) is None
