"""PN → HumanName (PS3.5 §6.2.1; FHIR iso21090-EN-representation for ideographic/phonetic groups)."""

from __future__ import annotations

from app.mapping.names import EN_REPRESENTATION, display, human_names


class TestHumanNames:
    def test_three_groups(self):
        names = human_names({"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"})
        assert [n.get("extension", [{}])[0].get("valueCode") for n in names] == [None, "IDE", "SYL"]
        assert all(n.get("extension", [{"url": EN_REPRESENTATION}])[0]["url"] == EN_REPRESENTATION for n in names)
        assert names[1] == {
            "use": "official",
            "extension": [{"url": EN_REPRESENTATION, "valueCode": "IDE"}],
            "text": "山田 太郎",
            "family": "山田",
            "given": ["太郎"],
        }

    def test_all_components(self):
        (name,) = human_names({"Alphabetic": "Adams^John Robert Quincy^^Rev.^B.A. M.Div."})
        assert name == {
            "use": "official",
            "text": "Rev. John Robert Quincy Adams B.A. M.Div.",
            "family": "Adams",
            "given": ["John Robert Quincy"],
            "prefix": ["Rev."],
            "suffix": ["B.A. M.Div."],
        }

    def test_middle_name_component_becomes_a_given_name(self):
        (name,) = human_names({"Alphabetic": "Doe^Jane^Ann"})
        assert name["given"] == ["Jane", "Ann"]

    def test_empty_groups_and_trailing_carets_give_nothing(self):
        assert human_names(None) == []
        assert human_names({"Alphabetic": "^^", "Ideographic": ""}) == []
        assert human_names({"Alphabetic": "Cher^"}) == [{"use": "official", "text": "Cher", "family": "Cher"}]

    def test_display_prefers_alphabetic(self):
        assert display({"Ideographic": "山田^太郎", "Alphabetic": "Yamada^Tarou"}) == "Tarou Yamada"
        assert display({"Ideographic": "山田^太郎"}) == "太郎 山田"
