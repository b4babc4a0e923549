"""app.dicom.kos: KOS DICOM JSON → KeyObjectSelection, and the per-series grouping for R5 ImagingSelection.

Categories:
- documents built by highdicom (tests/support/kos.py), serialised as a server would (Part 10 round trip, then
  ``to_json_dict``), compared whole against an oracle built from the inputs (``expected_kos``);
- hand-written odd dicts: missing attributes, wrong shapes, lower-case keys, broken evidence;
- input that is not a KOS (the one error, NotKeyObjectSelection);
- a property test: any JSON-like value either parses or raises NotKeyObjectSelection;
- DA/TM/offset parsing and the grouping helper.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset

from app.dicom.kos import (
    KOS_SOP_CLASS_UID,
    Code,
    KeyObjectSelection,
    NotKeyObjectSelection,
    PersonName,
    ReferencedInstance,
    SeriesSelection,
    by_series,
    dicom_datetime,
    parse_kos,
)
from tests.support.kos import (
    FOR_CONFERENCE,
    FOR_REFERRING_PROVIDER,
    FOR_TEACHING,
    PURPOSES,
    QUALITY_ISSUE,
    REJECTIONS,
    expected_kos,
    kos_json,
    make_kos,
    make_multiframe,
    make_study,
)

SEED = 11
PATIENT: dict[str, Any] = {"patient_id": "KOS0001", "patient_name": "Müller^Jürgen", "issuer": "HOSP-K"}

# DICOM JSON keys used by the hand-written documents.
SOP_CLASS, SOP_UID, MODALITY, CONCEPT, CONTENT, EVIDENCE = (
    "00080016",
    "00080018",
    "00080060",
    "0040A043",
    "0040A730",
    "0040A375",
)
REF_SOP, REF_SERIES, REF_CLASS, REF_UID, FRAMES = "00081199", "00081115", "00081150", "00081155", "00081160"
STUDY_UID, SERIES_UID, VALUE_TYPE, TEXT_VALUE, PERSON = "0020000D", "0020000E", "0040A040", "0040A160", "0040A123"


@pytest.fixture(scope="module")
def ct() -> list[Dataset]:
    return make_study(SEED, "ct", series_sizes=(3, 2), tz_offset="+0100", **PATIENT)


@pytest.fixture(scope="module")
def mr() -> list[Dataset]:
    return make_study(SEED, "mr", modality="MR", study_date="20240210", **PATIENT)


@pytest.fixture(scope="module")
def cr() -> list[Dataset]:
    return make_study(SEED, "cr", modality="CR", series_sizes=(1,), **PATIENT)


@pytest.fixture(scope="module")
def cine(ct: list[Dataset]) -> Dataset:
    return make_multiframe(ct[0], frames=6, seed=SEED)


# -- hand-written DICOM JSON ---------------------------------------------------------------------------------


def el(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def code(value: str, scheme: str, meaning: str) -> dict[str, Any]:
    return {"00080100": el("SH", value), "00080102": el("SH", scheme), "00080104": el("LO", meaning)}


def image_item(uid: str, *frames: Any, sop_class: str = "1.2.840.10008.5.1.4.1.1.2") -> dict[str, Any]:
    ref: dict[str, Any] = {REF_CLASS: el("UI", sop_class), REF_UID: el("UI", uid)}
    if frames:
        ref[FRAMES] = el("IS", *frames)
    return {
        "0040A010": el("CS", "CONTAINS"),
        VALUE_TYPE: el("CS", "IMAGE"),
        CONCEPT: el("SQ", code("260753009", "SCT", "Source")),
        REF_SOP: el("SQ", ref),
    }


def evidence(*studies: tuple[str, str, list[str]]) -> dict[str, Any]:
    """(study, series, [sop uids]) triples → CurrentRequestedProcedureEvidenceSequence."""
    return el(
        "SQ",
        *(
            {
                STUDY_UID: el("UI", study),
                REF_SERIES: el(
                    "SQ",
                    {
                        SERIES_UID: el("UI", series),
                        REF_SOP: el(
                            "SQ",
                            *({REF_CLASS: el("UI", "1.2.840.10008.5.1.4.1.1.2"), REF_UID: el("UI", u)} for u in uids),
                        ),
                    },
                ),
            }
            for study, series, uids in studies
        ),
    )


def minimal(**extra: Any) -> dict[str, Any]:
    ds: dict[str, Any] = {SOP_CLASS: el("UI", KOS_SOP_CLASS_UID), SOP_UID: el("UI", "1.2.3.4")}
    ds.update(extra)
    return ds


def document() -> dict[str, Any]:
    """A small, valid hand-written KOS: two images of one series, the second with frames 3 and 1."""
    return minimal(
        **{
            STUDY_UID: el("UI", "1.2.3"),
            SERIES_UID: el("UI", "1.2.3.9"),
            CONCEPT: el("SQ", code("113004", "DCM", "For Teaching")),
            CONTENT: el("SQ", image_item("1.2.3.1.1"), image_item("1.2.3.1.2", 3, 1)),
            EVIDENCE: evidence(("1.2.3", "1.2.3.1", ["1.2.3.1.1", "1.2.3.1.2"])),
        }
    )


def ref(uid: str, frames: tuple[int, ...] = (), series: str = "1.2.3.1", study: str = "1.2.3") -> ReferencedInstance:
    return ReferencedInstance(study, series, uid, "1.2.840.10008.5.1.4.1.1.2", frames)


# -- documents built with highdicom -------------------------------------------------------------------------------


class TestFromHighdicom:
    def test_every_field(self, ct: list[Dataset]) -> None:
        kos = make_kos(
            ct,
            title=FOR_TEACHING,
            description="Classic presentation. ",
            seed=SEED,
            observer_name="Wélby^Marcus",
            timezone_offset="+0100",
            content_date="20240302",
            content_time="101112.5",
        )
        got = parse_kos(kos_json(kos))
        want = expected_kos(
            kos, ct, title=FOR_TEACHING, description="Classic presentation.", observer_name="Wélby^Marcus"
        )
        assert got == want
        # The oracle is built from the inputs; spot-check it against the literal values too.
        assert got.sop_instance_uid == kos.SOPInstanceUID and got.study_uid == ct[0].StudyInstanceUID
        assert got.patient_id == "KOS0001" and got.issuer_of_patient_id == "HOSP-K"
        assert got.patient_name == PersonName("Müller^Jürgen")
        assert got.title == Code("113004", "DCM", "For Teaching") and not got.is_rejection
        assert got.description == "Classic presentation."
        assert got.observer_name == PersonName("Wélby^Marcus")
        assert (got.content_date, got.content_time, got.timezone_offset) == ("20240302", "101112.5", "+0100")
        assert got.issued == datetime(2024, 3, 2, 10, 11, 12, 500000, tzinfo=timezone(timedelta(hours=1)))
        assert [r.sop_instance_uid for r in got.references] == [str(ds.SOPInstanceUID) for ds in ct]
        assert all(r.frames == () for r in got.references)
        assert got.unresolved == ()

    @pytest.mark.parametrize("title", PURPOSES, ids=[t[2] for t in PURPOSES])
    def test_purposes(self, ct: list[Dataset], title: tuple[str, str, str]) -> None:
        kos = make_kos(ct[:2], title=title, seed=SEED)
        got = parse_kos(kos_json(kos))
        assert got == expected_kos(kos, ct[:2], title=title)
        assert got.title == Code(*title) and not got.is_rejection

    @pytest.mark.parametrize("title", REJECTIONS, ids=[t[2] for t in REJECTIONS])
    def test_rejection_notes(self, ct: list[Dataset], title: tuple[str, str, str]) -> None:
        kos = make_kos(ct[3:], title=title, seed=SEED)
        got = parse_kos(kos_json(kos))
        assert got == expected_kos(kos, ct[3:], title=title)
        assert got.is_rejection

    def test_frames_of_a_multiframe_image(self, ct: list[Dataset], cine: Dataset) -> None:
        frames = {str(cine.SOPInstanceUID): [2, 5]}
        kos = make_kos([ct[1], cine], title=FOR_CONFERENCE, frames=frames, seed=SEED)
        got = parse_kos(kos_json(kos))
        assert got == expected_kos(kos, [ct[1], cine], title=FOR_CONFERENCE, frames=frames)
        assert {r.sop_instance_uid: r.frames for r in got.references} == {
            str(ct[1].SOPInstanceUID): (),
            str(cine.SOPInstanceUID): (2, 5),
        }
        # The multi-frame image is in its own series of the same study: two ImagingSelections.
        assert [(s.series_uid, len(s.instances)) for s in got.series()] == [
            (str(ct[1].SeriesInstanceUID), 1),
            (str(cine.SeriesInstanceUID), 1),
        ]

    def test_two_studies(self, ct: list[Dataset], mr: list[Dataset]) -> None:
        # The KOS lives in the MR study; the CT instance comes first in `referenced` but second in the evidence.
        referenced = [ct[0], mr[0], mr[1]]
        kos = make_kos(referenced, title=FOR_REFERRING_PROVIDER, study_uid=str(mr[0].StudyInstanceUID), seed=SEED)
        assert kos.StudyInstanceUID == mr[0].StudyInstanceUID
        assert str(kos.StudyDate) == "20240210"  # patient/study attributes come from the home study
        got = parse_kos(kos_json(kos))
        assert got == expected_kos(kos, referenced, title=FOR_REFERRING_PROVIDER)
        assert [(s.study_uid, [i.sop_instance_uid for i in s.instances]) for s in got.series()] == [
            (mr[0].StudyInstanceUID, [mr[0].SOPInstanceUID, mr[1].SOPInstanceUID]),
            (ct[0].StudyInstanceUID, [ct[0].SOPInstanceUID]),
        ]

    def test_three_studies(self, ct: list[Dataset], mr: list[Dataset], cr: list[Dataset]) -> None:
        # highdicom alone raises for more than one other study; tests/support/kos.py rebuilds the evidence.
        referenced = [cr[0], ct[4], mr[1]]
        kos = make_kos(referenced, title=QUALITY_ISSUE, seed=SEED)
        got = parse_kos(kos_json(kos))
        assert got == expected_kos(kos, referenced, title=QUALITY_ISSUE)
        assert len({r.study_uid for r in got.references}) == 3

    def test_without_description_or_observer(self, ct: list[Dataset]) -> None:
        got = parse_kos(kos_json(make_kos(ct[:1], title=QUALITY_ISSUE, seed=SEED)))
        assert got.description is None and got.observer_name is None and got.device_observer_name is None
        assert got.timezone_offset is None
        assert got.issued == datetime(2024, 3, 1, 9, 30)  # naive: the zone is the caller's to decide

    def test_wado_metadata_array(self, ct: list[Dataset]) -> None:
        # GET …/instances/{uid}/metadata answers a one-element array.
        kos = make_kos(ct[:1], title=FOR_TEACHING, seed=SEED)
        assert parse_kos([kos_json(kos)]) == parse_kos(kos_json(kos))

    def test_three_group_patient_name(self) -> None:
        images = make_study(SEED, "jp", patient_id="JP1", patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう")
        got = parse_kos(kos_json(make_kos(images, title=FOR_TEACHING, seed=SEED)))
        assert got.patient_name == PersonName("Yamada^Tarou", "山田^太郎", "やまだ^たろう")
        assert got.issuer_of_patient_id is None

    def test_builder_is_deterministic(self, ct: list[Dataset], cine: Dataset) -> None:
        def build() -> dict[str, Any]:
            frames = {str(cine.SOPInstanceUID): [1]}
            return kos_json(make_kos([cine, ct[0]], title=FOR_TEACHING, frames=frames, seed=SEED, observer_name="A^B"))

        assert build() == build()

    def test_builder_refuses_frames_of_unreferenced_instances(self, ct: list[Dataset]) -> None:
        with pytest.raises(ValueError, match="not referenced"):
            make_kos(ct[:1], title=FOR_TEACHING, frames={"1.2.3": [1]})


# -- hand-written documents ------------------------------------------------------------------------------------


class TestHandWritten:
    def test_document(self) -> None:
        got = parse_kos(document())
        assert got.references == (ref("1.2.3.1.1"), ref("1.2.3.1.2", (3, 1)))  # the document's frame order
        assert got.title == Code("113004", "DCM", "For Teaching")

    def test_minimal(self) -> None:
        assert parse_kos(minimal()) == KeyObjectSelection(
            sop_instance_uid="1.2.3.4",
            study_uid=None,
            series_uid=None,
            patient_id=None,
            issuer_of_patient_id=None,
            patient_name=None,
            title=None,
            description=None,
            observer_name=None,
            device_observer_name=None,
            content_date=None,
            content_time=None,
            timezone_offset=None,
            references=(),
        )

    def test_sop_class_missing_but_modality_ko(self) -> None:
        ds = minimal(**{MODALITY: el("CS", "KO")})
        del ds[SOP_CLASS]
        assert parse_kos(ds).sop_instance_uid == "1.2.3.4"

    def test_lower_case_keys(self) -> None:
        ds = {key.lower(): value for key, value in document().items()}
        assert parse_kos(ds) == parse_kos(document())

    def test_padding_is_stripped(self) -> None:
        ds = document()
        ds[SOP_UID] = el("UI", "1.2.3.4\x00")
        ds[STUDY_UID] = el("UI", " 1.2.3 ")
        got = parse_kos(ds)
        assert (got.sop_instance_uid, got.study_uid) == ("1.2.3.4", "1.2.3")

    def test_reference_without_evidence_is_unresolved(self) -> None:
        ds = document()
        ds[CONTENT]["Value"].append(image_item("9.9.9"))
        got = parse_kos(ds)
        assert got.unresolved == ("9.9.9",)
        assert [r.sop_instance_uid for r in got.references] == ["1.2.3.1.1", "1.2.3.1.2"]

    def test_evidence_without_content_item_is_a_whole_instance(self) -> None:
        ds = document()
        ds[CONTENT]["Value"].pop()
        assert parse_kos(ds).references[1] == ref("1.2.3.1.2")

    def test_repeated_references_merge_frames(self) -> None:
        ds = document()
        ds[CONTENT]["Value"].append(image_item("1.2.3.1.2", 1, 4))
        assert parse_kos(ds).references[1].frames == (3, 1, 4)

    def test_a_whole_instance_reference_wins_over_frames(self) -> None:
        ds = document()
        ds[CONTENT]["Value"].append(image_item("1.2.3.1.2"))
        ds[CONTENT]["Value"].append(image_item("1.2.3.1.2", 7))
        assert parse_kos(ds).references[1].frames == ()

    @pytest.mark.parametrize(
        ("frames", "want"),
        [
            (("2", " 5 "), (2, 5)),  # IS as strings
            (("1\\3",), (1, 3)),  # a backslash-joined string
            ((2.0, 3.5), (2,)),  # integral floats only
            ((0, -1, 2), (2,)),  # frames count from 1
            ((True, None, [1], {"a": 1}, "x"), ()),  # garbage: whole instance
            ((2, 2, 1), (2, 1)),  # duplicates
        ],
    )
    def test_odd_frame_numbers(self, frames: tuple[Any, ...], want: tuple[int, ...]) -> None:
        ds = document()
        ds[CONTENT] = el("SQ", image_item("1.2.3.1.1", *frames))
        assert parse_kos(ds).references[0].frames == want

    def test_sop_class_from_the_content_tree_when_evidence_lacks_it(self) -> None:
        ds = document()
        del ds[EVIDENCE]["Value"][0][REF_SERIES]["Value"][0][REF_SOP]["Value"][1][REF_CLASS]
        ds[CONTENT]["Value"][1] = image_item("1.2.3.1.2", sop_class="1.2.840.10008.5.1.4.1.1.7.2")
        assert parse_kos(ds).references[1].sop_class_uid == "1.2.840.10008.5.1.4.1.1.7.2"
        del ds[CONTENT]["Value"][1][REF_SOP]["Value"][0][REF_CLASS]
        assert parse_kos(ds).references[1].sop_class_uid is None

    def test_duplicate_evidence_keeps_the_first(self) -> None:
        ds = document()
        ds[EVIDENCE]["Value"].append(evidence(("7.7", "7.7.1", ["1.2.3.1.1"]))["Value"][0])
        assert parse_kos(ds).references[0].study_uid == "1.2.3"

    def test_description_and_observers(self) -> None:
        ds = document()
        ds[CONTENT]["Value"][:0] = [
            {VALUE_TYPE: el("TEXT"), CONCEPT: el("SQ", code("113012", "DCM", "Key Object Description"))},  # empty
            {CONCEPT: el("SQ", code("113012", "99LOCAL", "Key Object Description")), TEXT_VALUE: el("UT", "no")},
            {CONCEPT: el("SQ", code("113012", "DCM", "Key Object Description")), TEXT_VALUE: el("UT", "  yes \x00")},
            {CONCEPT: el("SQ", code("121008", "DCM", "Person Observer Name")), PERSON: el("PN", {})},
            {CONCEPT: el("SQ", code("121008", "DCM", "Person Observer Name")), PERSON: el("PN", "Plain^String")},
            {CONCEPT: el("SQ", code("121013", "DCM", "Device Observer Name")), TEXT_VALUE: el("UT", "Workstation 3")},
        ]
        got = parse_kos(ds)
        assert got.description == "yes"
        assert got.observer_name == PersonName("Plain^String")
        assert got.device_observer_name == "Workstation 3"
        assert got.observer_login is None and got.device_observer_uid is None

    def test_observer_login_and_device_uid(self) -> None:
        # TID 1003 "Person Observer's Login Name" (where a manifest made through the API keeps the SMART fhirUser)
        # and TID 1004 "Device Observer UID" (UIDREF: the UID in (0040,A124)).
        ds = document()
        ds[CONTENT]["Value"][:0] = [
            {CONCEPT: el("SQ", code("128774", "DCM", "Person Observer's Login Name")), TEXT_VALUE: el("UT", " ")},
            {CONCEPT: el("SQ", code("128774", "DCM", "x")), TEXT_VALUE: el("UT", "Practitioner/7 ")},
            {CONCEPT: el("SQ", code("121012", "DCM", "Device Observer UID")), "0040A124": el("UI", "2.25.77")},
        ]
        got = parse_kos(ds)
        assert (got.observer_login, got.device_observer_uid) == ("Practitioner/7", "2.25.77")

    @pytest.mark.parametrize(
        ("item", "want"),
        [
            (
                {"00080119": el("UC", "1234567890123456789"), "00080102": el("SH", "SCT")},
                Code("1234567890123456789", "SCT", None),
            ),
            ({"00080120": el("UR", "urn:x:1")}, Code("urn:x:1", None, None)),
            (code("113001", "99LOCAL", "Rejected"), Code("113001", "99LOCAL", "Rejected")),
            ({"00080102": el("SH", "DCM")}, None),  # no value: no code
        ],
    )
    def test_title_codes(self, item: dict[str, Any], want: Code | None) -> None:
        got = parse_kos(minimal(**{CONCEPT: el("SQ", item)}))
        assert got.title == want
        assert not got.is_rejection  # a rejection code of another scheme is not a rejection note

    def test_deep_nesting_does_not_recurse_forever(self) -> None:
        item: dict[str, Any] = image_item("1.2.3.1.1", 9)
        for _ in range(5000):
            item = {CONTENT: el("SQ", item)}
        ds = document()
        ds[CONTENT] = el("SQ", item)
        # Too deep to be TID 2010: the reference is not found, so the instance is whole; and no RecursionError.
        assert parse_kos(ds).references[0].frames == ()

    @pytest.mark.parametrize(
        "mutation",
        [
            lambda ds: ds.update({CONTENT: {"vr": "SQ", "Value": "not a list"}}),
            lambda ds: ds.update({CONTENT: ["not an element"]}),
            lambda ds: ds.update({CONTENT: el("SQ", 1, "x", None, [])}),
            lambda ds: ds.update({EVIDENCE: el("SQ", {STUDY_UID: el("UI", 5)})}),
            lambda ds: ds.update({EVIDENCE: el("SQ", {REF_SERIES: el("SQ", {SERIES_UID: el("UI", "1")})})}),
            lambda ds: ds.update({EVIDENCE: el("SQ", {STUDY_UID: el("UI", "1"), REF_SERIES: el("SQ", {})})}),
            lambda ds: ds.update({EVIDENCE: {"vr": "SQ"}}),
            lambda ds: ds.update({CONCEPT: el("SQ")}),
            lambda ds: ds.update({CONCEPT: el("SQ", "113004")}),
            lambda ds: ds.update({"00100010": el("PN", {"Alphabetic": 3, "Ideographic": ""})}),
            lambda ds: ds.update({"00100010": el("PN", ["Doe^Jane"])}),
            lambda ds: ds.update({"00080023": el("DA", 20240101), "00080033": el("TM", None)}),
            lambda ds: ds.update({"00080201": el("SH", "garbage")}),
            lambda ds: ds.update({STUDY_UID: "1.2.3"}),
        ],
    )
    def test_garbage_shapes_never_crash(self, mutation: Any) -> None:
        ds = document()
        mutation(ds)
        got = parse_kos(ds)
        assert got.sop_instance_uid == "1.2.3.4"
        _ = (got.issued, got.series(), got.is_rejection)


class TestNotAKos:
    @pytest.mark.parametrize(
        "metadata",
        [
            None,
            "1.2.3",
            42,
            [],
            [minimal(), minimal()],
            [None],
            minimal(**{SOP_CLASS: el("UI", "1.2.840.10008.5.1.4.1.1.2")}),  # a CT image
            minimal(**{SOP_CLASS: el("UI", "1.2.840.10008.5.1.4.1.1.88.11")}),  # a Basic Text SR
            {SOP_UID: el("UI", "1.2.3.4"), MODALITY: el("CS", "SR")},  # no SOP class, not KO
            {SOP_UID: el("UI", "1.2.3.4")},
            minimal(**{SOP_UID: el("UI")}),  # no SOP Instance UID
            minimal(**{SOP_UID: el("UI", 1234)}),
        ],
    )
    def test_raises_one_error(self, metadata: Any) -> None:
        with pytest.raises(NotKeyObjectSelection):
            parse_kos(metadata)

    def test_error_is_a_value_error(self) -> None:
        assert issubclass(NotKeyObjectSelection, ValueError)


# Any JSON-like value, with keys drawn from the tags parse_kos reads, so the search reaches deep into it.
_TAGS = [SOP_CLASS, SOP_UID, MODALITY, CONCEPT, CONTENT, EVIDENCE, REF_SOP, REF_SERIES, REF_UID, FRAMES, STUDY_UID]
_TAGS += [SERIES_UID, VALUE_TYPE, TEXT_VALUE, PERSON, "00080100", "00080102", "00100010", "00080023", "00080201"]
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
_SCALARS |= st.sampled_from([KOS_SOP_CLASS_UID, "IMAGE", "113012", "DCM", "1\\2", "20240101", "+0100"])
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from([*_TAGS, "Value", "vr", "Alphabetic"]), inner, max_size=4)
    ),
    max_leaves=40,
)


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(_JSON)
def test_any_json_parses_or_raises_not_a_kos(metadata: Any) -> None:
    try:
        got = parse_kos(metadata)
    except NotKeyObjectSelection:
        return
    _ = (got.issued, got.series(), got.is_rejection)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(st.dictionaries(st.sampled_from(_TAGS), _JSON, max_size=6))
def test_any_document_with_kos_identity_parses(extra: dict[str, Any]) -> None:
    ds = {**copy.deepcopy(extra), **minimal()}
    assert parse_kos(ds).sop_instance_uid == "1.2.3.4"


# -- helpers ------------------------------------------------------------------------------------------------------


class TestDicomDatetime:
    @pytest.mark.parametrize(
        ("date", "time", "offset", "want"),
        [
            ("20240301", "093000", None, datetime(2024, 3, 1, 9, 30)),
            ("20240301", "09", None, datetime(2024, 3, 1, 9)),
            ("20240301", "0930", "-0500", datetime(2024, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=-5)))),
            ("20240301", "093000.123", "+0000", datetime(2024, 3, 1, 9, 30, 0, 123000, tzinfo=UTC)),
            ("20240301", "235960", None, datetime(2024, 3, 1, 23, 59, 59)),  # leap second clamped
            ("20240301", "093000", "garbage", datetime(2024, 3, 1, 9, 30)),  # bad offset ignored
            ("20240301", "093000", "+2500", datetime(2024, 3, 1, 9, 30)),  # not a UTC offset
            ("20240301", None, None, None),
            (None, "093000", None, None),
            ("2024-03-01", "093000", None, None),
            ("20241301", "093000", None, None),
            ("20240301", "09:30:00", None, None),
            ("20240301", "250000", None, None),
        ],
    )
    def test_parse(self, date: str | None, time: str | None, offset: str | None, want: datetime | None) -> None:
        assert dicom_datetime(date, time, offset) == want


class TestBySeries:
    def test_groups_in_first_appearance_order(self) -> None:
        a1, b1, a2, c1 = (
            ref("1", series="A"),
            ref("2", series="B"),
            ref("3", series="A"),
            ref("4", series="C", study="9"),
        )
        assert by_series([a1, b1, a2, c1]) == (
            SeriesSelection("1.2.3", "A", (a1, a2)),
            SeriesSelection("1.2.3", "B", (b1,)),
            SeriesSelection("9", "C", (c1,)),
        )

    def test_same_series_uid_in_two_studies_stays_apart(self) -> None:
        # Series UIDs are globally unique, but a broken document may reuse one; the key is the pair.
        x, y = ref("1", series="S", study="1"), ref("2", series="S", study="2")
        assert [s.study_uid for s in by_series([x, y])] == ["1", "2"]

    def test_empty(self) -> None:
        assert by_series([]) == ()
