"""IHE PIXm (ITI-83, "Mobile Patient Identifier Cross-reference Query"), the pure part: the request's parameters
and what its answer says (IHE ITI TF PIXm, ITI-83.md).

    GET [base]/Patient/$ihe-pix?sourceIdentifier=<system>|<value>
    → 200 Parameters: a ``targetIdentifier`` parameter (valueIdentifier, with its assigning authority's system)
      per identifier of the same person in another domain, and ``targetId`` (a Reference to a Patient)
    → 404: the source identifier is not known (no other identifiers); 400: its assigning authority is not known
"""

from __future__ import annotations

from typing import Any


def source_identifier(system: str, value: str) -> str:
    """The ``sourceIdentifier`` token (FHIR token search syntax: ``system|value``; ``|`` and ``\\`` in the value
    escaped with ``\\``, R4 search.html#escaping)."""
    escaped = value.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")
    return f"{system}|{escaped}"


def target_identifiers(answer: Any) -> list[tuple[str, str]]:
    """The (system, value) of every ``targetIdentifier`` of a Parameters answer; anything else is ignored, and an
    answer that is no Parameters resource raises ValueError."""
    if not isinstance(answer, dict) or answer.get("resourceType") != "Parameters":
        raise ValueError("not a FHIR Parameters resource")
    out: list[tuple[str, str]] = []
    for parameter in answer.get("parameter") or []:
        if not isinstance(parameter, dict) or parameter.get("name") != "targetIdentifier":
            continue
        ident = parameter.get("valueIdentifier")
        if not isinstance(ident, dict):
            continue
        system, value = ident.get("system"), ident.get("value")
        if isinstance(system, str) and isinstance(value, str) and system and value and len(value) <= 64:
            out.append((system, value))
    return list(dict.fromkeys(out))
