"""Pre-query rows screened for IOCM-rejected instances (app.dicom.rejections), and where app.usecases.studies applies
the screen."""

from __future__ import annotations

import asyncio

from app.dicom import dicom_json as dj
from app.dicom import rejections
from app.dicom.kos import parse_kos
from app.dicom.qido import QidoQuery
from app.pacs.upstream import QidoResult
from app.planning.plan import Plan, Prequery
from app.usecases.studies import Fetch, _candidate_uids


def instance(study: str, series: str, sop: str) -> dj.Dataset:
    return {dj.STUDY_UID: (study,), dj.SERIES_UID: (series,), dj.SOP_INSTANCE_UID: (sop,)}


def series_row(study: str, series: str, held: int | None) -> dj.Dataset:
    row: dj.Dataset = {dj.STUDY_UID: (study,), dj.SERIES_UID: (series,)}
    if held is not None:
        row[dj.NUMBER_OF_SERIES_INSTANCES] = (held,)
    return row


REJECTED = frozenset({("1.1", "1.1.1"), ("1.2", "1.2.1"), ("1.2", "1.2.2")})


def test_rejected_instance_rows_are_left_out():
    rows = [instance("1", "1.1", "1.1.1"), instance("1", "1.1", "1.1.2"), instance("2", "2.1", "2.1.1")]
    assert rejections.screen_instances(rows, REJECTED) == rows[1:]
    assert rejections.screen_instances(rows, frozenset()) == rows


def test_modalities_in_study_keep_only_what_is_still_shown():
    study = {dj.STUDY_UID: ("1",), dj.MODALITIES_IN_STUDY: ("CT", "MR", "KO")}
    ct, mr, ko = ({dj.SOP_INSTANCE_UID: (f"1.{m}",), dj.MODALITY: (m,)} for m in ("CT", "MR", "KO"))
    ((row, rows),) = rejections.drop_instances([(study, [ct, mr, ko])], frozenset({"1.MR"}))
    assert (row[dj.MODALITIES_IN_STUDY], rows) == (("CT", "KO"), [ct, ko])
    assert study[dj.MODALITIES_IN_STUDY] == ("CT", "MR", "KO")  # the cached row is not changed
    # Nothing rejected in the study: the PACS's value stands, even if it names more than the rows.
    assert rejections.drop_instances([(study, [ct])], frozenset({"9"})) == [(study, [ct])]
    # Every modality gone: the attribute goes (an empty tuple is no DICOM value).
    ((row, _),) = rejections.drop_instances([({dj.MODALITIES_IN_STUDY: ("MR",)}, [mr])], frozenset({"1.MR"}))
    assert dj.MODALITIES_IN_STUDY not in row
    # Rows without Modality cannot tell what is shown: the PACS's value stands.
    bare = {dj.SOP_INSTANCE_UID: ("1.x",)}
    ((row, _),) = rejections.drop_instances([(study, [bare, mr])], frozenset({"1.MR"}))
    assert row is study


def test_a_series_is_doubtful_when_the_notes_name_as_many_instances_as_it_holds():
    rows = [
        series_row("1", "1.1", 2),  # one of two rejected: kept without asking
        series_row("1", "1.2", 2),  # two of two: doubtful
        series_row("1", "1.3", 5),  # nothing rejected
        series_row("1", "1.2", 2),  # the same series twice: named once
    ]
    assert rejections.doubtful_series(rows, REJECTED) == ["1.2"]
    # No count on the row: only its instances can tell.
    assert rejections.doubtful_series([series_row("1", "1.1", None), series_row("1", "1.3", None)], REJECTED) == ["1.1"]


def test_a_doubtful_series_goes_only_when_none_of_its_instances_is_left():
    rows = [series_row("1", "1.1", 1), series_row("1", "1.2", 2), series_row("2", "2.1", 3)]
    everything_rejected = [instance("1", "1.1", "1.1.1")]
    assert rejections.screen_series(rows, ["1.1"], everything_rejected, REJECTED) == rows[1:]
    # The note names two instances of 1.2, but the PACS holds one of them and another one (1.2.9): 1.2 stays.
    held = [instance("1", "1.2", "1.2.1"), instance("1", "1.2", "1.2.9")]
    assert rejections.screen_series(rows, ["1.2"], held, REJECTED) == rows
    assert rejections.screen_series(rows, [], [], REJECTED) == rows


REJECTION_NOTE = {
    "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.59"]},
    "00080018": {"vr": "UI", "Value": ["9.9.9"]},
    "0020000D": {"vr": "UI", "Value": ["1"]},
    "0020000E": {"vr": "UI", "Value": ["1.9"]},
    "0040A043": {
        "vr": "SQ",
        "Value": [
            {
                "00080100": {"vr": "SH", "Value": ["113001"]},
                "00080102": {"vr": "SH", "Value": ["DCM"]},
                "00080104": {"vr": "LO", "Value": ["Rejected for Quality Reasons"]},
            }
        ],
    },
    "0040A375": {
        "vr": "SQ",
        "Value": [
            {
                "0020000D": {"vr": "UI", "Value": ["1"]},
                "00081115": {
                    "vr": "SQ",
                    "Value": [
                        {
                            "0020000E": {"vr": "UI", "Value": ["1.1"]},
                            "00081199": {
                                "vr": "SQ",
                                "Value": [
                                    {
                                        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                                        "00081155": {"vr": "UI", "Value": ["1.1.1"]},
                                    }
                                ],
                            },
                        }
                    ],
                },
            }
        ],
    },
}


def test_rejected_references_come_from_rejection_notes_only():
    note = parse_kos(REJECTION_NOTE)
    assert note.is_rejection
    assert rejections.rejected_references([note]) == {("1.1", "1.1.1")}
    teaching = {**REJECTION_NOTE, "0040A043": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["113004"]}}]}}
    assert rejections.rejected_references([parse_kos(teaching)]) == frozenset()


# -- app.usecases.studies._candidate_uids: where the screen is applied ---


def prequery(level: str, attribute: str, value: str) -> Prequery:
    return Prequery(QidoQuery.build(level, {"x": value}), attribute, frozenset({value}))


def test_candidate_uids_screen_only_the_studies_still_in_the_running():
    first = prequery("instances", dj.SOP_CLASS_UID, "1.2.3")
    second = prequery("instances", dj.SOP_INSTANCE_UID, "5.5")
    answers = {
        first.query: [{dj.STUDY_UID: (s,), dj.SOP_CLASS_UID: ("1.2.3",)} for s in ("A", "B", "C")],
        second.query: [{dj.STUDY_UID: ("B",), dj.SOP_INSTANCE_UID: ("5.5",)}, {dj.STUDY_UID: ("D",)}],
    }
    seen: list[tuple[Prequery, list[str]]] = []

    async def fetch(query: QidoQuery) -> QidoResult:
        return QidoResult(rows=answers[query], nbytes=0)

    async def screen(pre: Prequery, rows: list[dj.Dataset]) -> list[dj.Dataset]:
        seen.append((pre, [dj.text(r, dj.STUDY_UID) or "" for r in rows]))
        return [r for r in rows if dj.text(r, dj.STUDY_UID) != "A"]  # A: found through rejected instances only

    plan = Plan(prequeries=(first, second))
    assert asyncio.run(_candidate_uids(plan, fetch, 100, screen)) == ["B"]
    # The second pre-query's rows of studies the first left out (D) are not screened; A is screened out first.
    assert seen == [(first, ["A", "B", "C"]), (second, ["B"])]
    assert asyncio.run(_candidate_uids(Plan(prequeries=(first,)), fetch, 100, screen)) == ["B", "C"]


def test_candidate_uids_do_not_screen_an_empty_answer():
    pre = prequery("series", dj.SERIES_UID, "7.7")

    def answering(rows: list[dj.Dataset]) -> Fetch:
        async def fetch(query: QidoQuery) -> QidoResult:
            return QidoResult(rows=rows, nbytes=0)

        return fetch

    async def screen(pre: Prequery, rows: list[dj.Dataset]) -> list[dj.Dataset]:
        raise AssertionError(f"screened {rows}")

    assert asyncio.run(_candidate_uids(Plan(prequeries=(pre,)), answering([]), 100, screen)) == []
    # Rows, but none of a study the UID constraint allows: nothing to screen either.
    found = answering([{dj.STUDY_UID: ("B",), dj.SERIES_UID: ("7.7",)}])
    assert asyncio.run(_candidate_uids(Plan(study_uids=("Z",), prequeries=(pre,)), found, 100, screen)) == []


# -- the gateway's search answers: DICOM JSON rows recounted (app.usecases.gateway_search)


def json_row(**attrs: tuple[str, list[object]]) -> dj.Dataset:
    return {tag: {"vr": vr, "Value": values} for tag, (vr, values) in attrs.items()}


def test_series_rows_count_only_instances_still_served_and_empty_ones_go():
    rows = [
        json_row(
            **{dj.STUDY_UID: ("UI", ["1"]), dj.SERIES_UID: ("UI", [s]), dj.NUMBER_OF_SERIES_INSTANCES: ("IS", [n])}
        )
        for s, n in (("1.1", 3), ("1.2", 1), ("1.3", 2))
    ]
    present = [instance("1", "1.1", "1.1.1"), instance("1", "1.2", "1.2.1")]  # rejected ones the PACS holds
    out = rejections.recount_series(rows, present)
    assert [(dj.text(r, dj.SERIES_UID), dj.integer(r, dj.NUMBER_OF_SERIES_INSTANCES)) for r in out] == [
        ("1.1", 2),
        ("1.3", 2),
    ]
    assert out[0][dj.NUMBER_OF_SERIES_INSTANCES] == {"vr": "IS", "Value": [2]} and out[1] is rows[2]


def test_study_rows_take_counts_and_modalities_from_the_series_still_shown():
    study = json_row(
        **{
            dj.STUDY_UID: ("UI", ["1"]),
            dj.MODALITIES_IN_STUDY: ("CS", ["CT", "MR", "KO"]),
            dj.NUMBER_OF_SERIES: ("IS", [3]),
            dj.NUMBER_OF_STUDY_INSTANCES: ("IS", [4]),
        }
    )
    other = json_row(**{dj.STUDY_UID: ("UI", ["2"]), dj.MODALITIES_IN_STUDY: ("CS", ["MR"])})
    series = [
        {dj.STUDY_UID: ("1",), dj.SERIES_UID: ("1.1",), dj.MODALITY: ("CT",), dj.NUMBER_OF_SERIES_INSTANCES: (2,)},
        {dj.STUDY_UID: ("1",), dj.SERIES_UID: ("1.9",), dj.MODALITY: ("KO",), dj.NUMBER_OF_SERIES_INSTANCES: (1,)},
    ]  # the MR series is gone (its only instance rejected)
    (row, untouched) = rejections.recount_studies([study, other], series, ["1"])
    assert dj.texts(row, dj.MODALITIES_IN_STUDY) == ["CT", "KO"]
    assert (dj.integer(row, dj.NUMBER_OF_SERIES), dj.integer(row, dj.NUMBER_OF_STUDY_INSTANCES)) == (2, 3)
    assert untouched is other
