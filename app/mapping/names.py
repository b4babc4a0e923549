"""DICOM PN (PS3.5 §6.2.1) → readable text and FHIR HumanName parts (pure)."""

from __future__ import annotations

from typing import Any


def components(group: str) -> tuple[str, list[str], str, str]:
    """``Family^Given^Middle^Prefix^Suffix`` → (family, given+middle, prefix, suffix)."""
    parts = [p.strip() for p in group.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    # Components are kept whole: "Mary Ann" may be one given name; only DICOM's own split is trusted.
    return family, [n for n in (given, middle) if n], prefix, suffix


def display(pn: dict[str, str] | None) -> str | None:
    """A one-line name for Reference.display: the alphabetic group, in "Prefix Given Middle Family Suffix" order."""
    if not pn:
        return None
    group = pn.get("Alphabetic") or pn.get("Ideographic") or pn.get("Phonetic") or ""
    family, given, prefix, suffix = components(group)
    text = " ".join(p for p in (prefix, *given, family, suffix) if p)
    return text or None


# PN component groups (PS3.5 §6.2.1.2) → the ISO 21090 name representation FHIR uses to tell them apart.
_REPRESENTATION = {"Alphabetic": "ABC", "Ideographic": "IDE", "Phonetic": "SYL"}
EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"


def human_names(pn: dict[str, str] | None) -> list[dict[str, Any]]:
    """One R4 HumanName per non-empty PN group; ideographic and phonetic ones carry EN-representation."""
    names: list[dict[str, Any]] = []
    for group, code in _REPRESENTATION.items():
        text = (pn or {}).get(group, "")
        family, given, prefix, suffix = components(text)
        if not (family or given or prefix or suffix):
            continue
        name: dict[str, Any] = {"use": "official"}
        if code != "ABC":
            name["extension"] = [{"url": EN_REPRESENTATION, "valueCode": code}]
        # Ideographic and phonetic groups are mostly CJK, written family name first.
        order = (prefix, *given, family, suffix) if code == "ABC" else (prefix, family, *given, suffix)
        name["text"] = " ".join(p for p in order if p)
        if family:
            name["family"] = family
        if given:
            name["given"] = given
        if prefix:
            name["prefix"] = [prefix]
        if suffix:
            name["suffix"] = [suffix]
        names.append(name)
    return names
