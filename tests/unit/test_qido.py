"""app.dicom.qido: QidoQuery as a hashable, sorted value; match_pattern makes values safe for a raw-only PACS."""

from __future__ import annotations

import pytest

from app.dicom.qido import INSTANCE_FIELDS, STUDY_FIELDS, QidoQuery, date_range, match_pattern, uid_list


class TestQidoQuery:
    def test_build_sorts_params_and_adds_fields_limit_offset(self):
        q = QidoQuery.build(
            "studies", {"PatientName": "Doe^J*", "PatientID": "X"}, fields=("00081030", "00100021"), limit=21, offset=40
        )
        assert q == QidoQuery(
            "studies",
            (
                ("PatientID", "X"),
                ("PatientName", "Doe^J*"),
                ("includefield", "00081030"),
                ("includefield", "00100021"),
                ("limit", "21"),
                ("offset", "40"),
            ),
        )

    def test_path_keeps_caret_star_and_question_mark_raw(self):
        q = QidoQuery.build("studies", {"PatientName": "Doe^J*", "PatientID": "MRN?0100"}, limit=5)
        assert q.path == "studies?PatientID=MRN?0100&PatientName=Doe^J*&limit=5"

    def test_path_of_a_query_without_params(self):
        assert QidoQuery.build("series", {}).path == "series"

    def test_zero_offset_and_no_limit_are_left_out(self):
        assert QidoQuery.build("instances", {"StudyInstanceUID": "1.2.3"}, offset=0).path == (
            "instances?StudyInstanceUID=1.2.3"
        )

    def test_equal_searches_are_equal_keys(self):
        a = QidoQuery.build("studies", {"PatientID": "X", "StudyDate": "20200101-"}, limit=3)
        b = QidoQuery.build("studies", {"StudyDate": "20200101-", "PatientID": "X"}, limit=3)
        assert a == b and hash(a) == hash(b)
        assert {a: 1}[b] == 1
        assert a != QidoQuery.build("series", {"PatientID": "X", "StudyDate": "20200101-"}, limit=3)

    def test_uid_list_range_and_wildcards_are_allowed_values(self):
        QidoQuery(
            "studies",
            (
                ("StudyInstanceUID", "1.2.3,1.2.4"),
                ("StudyDate", "20200101-20201231"),
                ("PatientID", "A?B*"),
                ("ReferringPhysicianName", "O'Brien^J"),
                ("00100020", "x:/~._-"),
            ),
        )

    @pytest.mark.parametrize("value", ["a b", "a&b", "a=b", "a#b", "a%20b", "a+b", "Müller", "a\\b", "a\nb"])
    def test_values_that_are_not_safe_raw_are_refused(self, value):
        with pytest.raises(AssertionError):
            QidoQuery("studies", (("PatientID", value),))

    @pytest.mark.parametrize("key", ["Patient ID", "PatientID&x", "", "a=b"])
    def test_keys_must_be_keywords_or_tags(self, key):
        with pytest.raises(AssertionError):
            QidoQuery("studies", ((key, "x"),))

    @pytest.mark.parametrize("level", ["patients", "study", "", "studies/1.2.3/series"])
    def test_level_is_one_of_three(self, level):
        with pytest.raises(AssertionError):
            QidoQuery(level, ())

    def test_include_fields_are_hex_tags(self):
        for tag in STUDY_FIELDS + INSTANCE_FIELDS:
            assert len(tag) == 8 and int(tag, 16) >= 0


class TestMatchPattern:
    @pytest.mark.parametrize(
        ("value", "pattern", "exact"),
        [
            ("MRN0100", "MRN0100", True),
            ("Doe^John", "Doe^John", True),
            ("O'Brien-1.2_x~:/", "O'Brien-1.2_x~:/", True),
            ("", "", True),
            ("MRN 0100", "MRN?0100", False),
            ("a,b", "a?b", False),  # a comma would make it a list
            ("a\\b", "a?b", False),  # a backslash separates values
            ("a*b", "a?b", False),  # the user's * is a literal in FHIR
            ("a?b", "a?b", False),
            ("x%y", "x?y", False),  # Orthanc does not percent-decode
            ("a&b=c#d+e", "a?b?c?d?e", False),
            ("Müller", "M*ller", False),
            ("Gómez^María", "G*mez^Mar*a", False),
            ("山田^太郎", "*^*", False),
            ("山田太郎x", "*x", False),  # a run of non-ASCII is one *
            ("ü", "*", False),
            ("a\tb", "a?b", False),
        ],
    )
    def test_outputs(self, value, pattern, exact):
        assert match_pattern(value) == (pattern, exact)

    @pytest.mark.parametrize("value", ["a b", "Müller", "x,y\\z", "山田^太郎", "*?", "é"])
    def test_patterns_are_always_sendable(self, value):
        pattern, _ = match_pattern(value)
        QidoQuery("studies", (("PatientName", pattern),))


class TestHelpers:
    def test_uid_list(self):
        assert uid_list(["1.2.3", "1.2.4"]) == "1.2.3,1.2.4"
        assert uid_list(("1.2",)) == "1.2"

    @pytest.mark.parametrize("uids", [[], ["1.2*"], ["1.2", ""], ["a.b"], ["1.2\\1.3"]])
    def test_uid_list_refuses_anything_but_uids(self, uids):
        with pytest.raises(AssertionError):
            uid_list(uids)

    @pytest.mark.parametrize("text", ["20200101-20201231", "20200101-", "-20201231", "20200101"])
    def test_date_range(self, text):
        assert date_range(text) == text

    @pytest.mark.parametrize("text", ["", "-", "2020-01-01", "2020-", "EMPTY", "9990614-9990616"])
    def test_date_range_refuses_non_da(self, text):
        with pytest.raises(AssertionError):
            date_range(text)
