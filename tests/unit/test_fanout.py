"""app.planning.fanout: one query asked of several archives, and their answers made one (issue 21)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.dicom.qido import QidoQuery
from app.planning import fanout


def _study(uid: str, *, modalities: tuple[str, ...] = ("CT",), instances: int = 1, issuer: str | None = None):
    row = {
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "00080061": {"vr": "CS", "Value": list(modalities)},
        "00201208": {"vr": "IS", "Value": [instances]},
    }
    if issuer:
        row["00100021"] = {"vr": "LO", "Value": [issuer]}
    return row


def _uids(rows):
    return [r["0020000D"]["Value"][0] for r in rows]


def test_an_archive_is_asked_from_row_zero_for_every_row_up_to_the_window():
    query = QidoQuery.build("studies", {"PatientID": "P1"}, limit=5, offset=10)
    assert fanout.source_query(query, "NORTH") == QidoQuery.build("studies", {"PatientID": "P1"}, limit=15)
    assert fanout.window(query) == (10, 5)


def test_the_issuer_key_is_left_out_only_where_unmarked_rows_are_that_domain():
    query = QidoQuery.build("studies", {"PatientID": "P1", "IssuerOfPatientID": "NORTH"})
    assert dict(fanout.source_query(query, "NORTH").params) == {"PatientID": "P1"}
    assert dict(fanout.source_query(query, "SOUTH").params) == {"PatientID": "P1", "IssuerOfPatientID": "NORTH"}
    pattern = QidoQuery.build("studies", {"IssuerOfPatientID": "N?RTH"})
    assert fanout.source_query(pattern, "SOUTH").params == ()


def test_stamp_marks_only_rows_without_an_issuer():
    rows = fanout.stamp([_study("1"), _study("2", issuer="NORTH"), {"0020000E": {"vr": "UI", "Value": ["3"]}}], "SOUTH")
    assert [r.get("00100021", {}).get("Value") for r in rows] == [["SOUTH"], ["NORTH"], None]


def test_a_study_in_two_archives_is_one_row_with_the_union_of_modalities_and_the_larger_counts():
    north = [_study("1", modalities=("CT",), instances=2)]
    south = [_study("1", modalities=("MR", "CT"), instances=5), _study("2")]
    merged = fanout.merge("studies", [north, south])
    assert _uids(merged) == ["1", "2"]
    assert merged[0]["00080061"]["Value"] == ["CT", "MR"] and merged[0]["00201208"]["Value"] == [5]
    assert north[0]["00080061"]["Value"] == ["CT"]  # cached rows are never changed


uid_lists = st.lists(st.sampled_from([str(i) for i in range(12)]), unique=True, max_size=8)


@given(st.lists(uid_lists, min_size=1, max_size=4), st.integers(0, 14), st.integers(1, 6))
def test_pages_cut_from_truncated_answers_equal_pages_of_the_whole(archives, offset, limit):
    """What makes paging exact across archives (module docstring): the first offset + limit rows of each archive
    decide the merged window, wherever the copies fall."""
    whole = fanout.merge("studies", [[_study(u) for u in a] for a in archives])
    truncated = [[_study(u) for u in a[: offset + limit]] for a in archives]
    assert (
        _uids(fanout.merge("studies", truncated, offset=offset, limit=limit)) == _uids(whole)[offset : offset + limit]
    )


def test_an_archive_in_a_zone_of_its_own_gives_its_rows_its_offset():
    from zoneinfo import ZoneInfo

    summer = {"00080020": {"vr": "DA", "Value": ["20220701"]}, "00080030": {"vr": "TM", "Value": ["093000"]}}
    winter = {"00080020": {"vr": "DA", "Value": ["20220105"]}}
    marked = {"00080020": {"vr": "DA", "Value": ["20220105"]}, "00080201": {"vr": "SH", "Value": ["+0100"]}}
    fanout.stamp_zone([summer, winter, marked], ZoneInfo("America/New_York"))
    assert [r["00080201"]["Value"][0] for r in (summer, winter, marked)] == ["-0400", "-0500", "+0100"]


def test_which_queries_say_who_holds_a_study_and_which_ask_for_known_studies_rows():
    assert fanout.holders_known(QidoQuery.build("studies", {"PatientID": "P1"}, limit=21))
    assert not fanout.holders_known(QidoQuery.build("studies", {"ModalitiesInStudy": "CT"}))
    rows = QidoQuery.build("instances", {"StudyInstanceUID": "1.2,1.3"}, fields=("00080008",), limit=500)
    assert fanout.studies_asked(rows) == ["1.2", "1.3"]
    assert fanout.studies_asked(QidoQuery.build("instances", {"StudyInstanceUID": "1.2", "Modality": "KO"})) is None
    assert fanout.for_studies(rows, ["1.3"]) == QidoQuery.build(
        "instances", {"StudyInstanceUID": "1.3"}, fields=("00080008",), limit=500
    )
