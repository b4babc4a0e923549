"""DICOM PN (PS3.5 §6.2.1) → readable text and FHIR HumanName parts (pure)."""

from __future__ import annotations


def components(group: str) -> tuple[str, list[str], str, str]:
    """``Family^Given^Middle^Prefix^Suffix`` → (family, given+middle, prefix, suffix)."""
    parts = [p.strip() for p in group.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    return family, [n for n in (given, *middle.split(" ")) if n], prefix, suffix


def display(pn: dict[str, str] | None) -> str | None:
    """A one-line name for Reference.display: the alphabetic group, in "Prefix Given Middle Family Suffix" order."""
    if not pn:
        return None
    group = pn.get("Alphabetic") or pn.get("Ideographic") or pn.get("Phonetic") or ""
    family, given, prefix, suffix = components(group)
    text = " ".join(p for p in (prefix, *given, family, suffix) if p)
    return text or None
