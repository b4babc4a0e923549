"""Generated narratives: readable, escaped, valid XHTML in the right namespace."""

from __future__ import annotations

from xml.etree import ElementTree

from app.mapping.narrative import imaging_study_text, patient_text

STUDY = {
    "resourceType": "ImagingStudy",
    "started": "2020-01-02T10:15:00+01:00",
    "modality": [{"system": "x", "code": "CT"}],
    "description": "CT <chest> & abdomen",
    "subject": {"reference": "Patient/p1", "display": "Jürgen Müller", "identifier": {"value": "MRN1"}},
    "referrer": {"display": "Dr. House"},
    "numberOfSeries": 1,
    "numberOfInstances": 3,
    "series": [
        {
            "uid": "1.2",
            "number": 1,
            "modality": {"code": "CT"},
            "description": "AX 5mm",
            "bodySite": {"code": "816094009", "display": "Chest"},
            "laterality": {"display": "Left"},
            "numberOfInstances": 3,
        }
    ],
}


def _parse(div: str) -> ElementTree.Element:
    return ElementTree.fromstring(div)  # raises on anything that is not well-formed XML


def test_study_narrative_is_escaped_xhtml_with_a_series_table():
    text = imaging_study_text(STUDY)
    assert text["status"] == "generated"
    root = _parse(text["div"])
    assert root.tag == "{http://www.w3.org/1999/xhtml}div"
    flat = "".join(root.itertext())
    assert "CT <chest> & abdomen" in flat and "Jürgen Müller (MRN1)" in flat and "Dr. House" in flat
    cells = [td.text for td in root.iter("{http://www.w3.org/1999/xhtml}td")]
    assert cells == ["1", "CT", "AX 5mm", "Chest (Left)", "3"]


def test_minimal_study_narrative():
    root = _parse(imaging_study_text({"resourceType": "ImagingStudy", "subject": {"reference": "Patient/x"}})["div"])
    assert "date unknown" in "".join(root.itertext())


def test_patient_narrative():
    text = patient_text(
        {
            "name": [{"text": "Tarou Yamada"}, {"text": "山田 太郎"}],
            "gender": "male",
            "birthDate": "1970-01-01",
            "identifier": [{"value": "JP<2>", "assigner": {"display": "HOSP"}}],
        }
    )
    flat = "".join(_parse(text["div"]).itertext())
    assert flat == "Tarou Yamada; 山田 太郎, male, born 1970-01-01Patient ID: JP<2> (HOSP)"
    assert "Unnamed" in "".join(_parse(patient_text({})["div"]).itertext())
