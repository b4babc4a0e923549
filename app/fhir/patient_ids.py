"""Deterministic Patient ids and identifier systems from PatientID + IssuerOfPatientID (pure).

Orthanc keys patients by PatientID alone, but two issuers can hand out the same PatientID (PS3.3 C.7.1.1), so our
Patient identity is the pair. The id encodes the pair reversibly (base32 of ``PatientID NUL Issuer``), so a search
``patient=Patient/<id>`` becomes QIDO ``PatientID=…&IssuerOfPatientID=…`` with no lookup and no database. FHIR ids
are at most 64 of ``[A-Za-z0-9.-]`` (R4 datatypes#id); a pair too long for that gets a hash id, which can be shown
but not searched by (``patient.identifier`` still works for it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from urllib.parse import quote, unquote

_REVERSIBLE = "p"
_HASHED = "h"


def encode(patient_id: str, issuer: str | None) -> str:
    raw = patient_id.encode() + (b"\x00" + issuer.encode() if issuer else b"")
    token = base64.b32encode(raw).decode().rstrip("=").lower()
    if len(token) < 64:
        return _REVERSIBLE + token
    return _HASHED + hashlib.sha256(raw).hexdigest()[:40]


def decode(fhir_id: str) -> tuple[str, str | None] | None:
    """The (PatientID, issuer) pair of an id made by :func:`encode`; None if it is not one."""
    if not fhir_id.startswith(_REVERSIBLE) or len(fhir_id) > 64:
        return None
    token = fhir_id[1:].upper()
    try:
        raw = base64.b32decode(token + "=" * (-len(token) % 8))
        text = raw.decode()
    except (binascii.Error, ValueError):
        return None
    if encode(*_split(text)) != fhir_id:  # reject non-canonical spellings so one patient has one id
        return None
    return _split(text)


def _split(text: str) -> tuple[str, str | None]:
    patient_id, _, issuer = text.partition("\x00")
    return patient_id, issuer or None


def system_for(issuer: str | None, *, default: str, prefix: str, table: Mapping[str, str]) -> str:
    """Identifier.system of a PatientID: configured table, then ``urn:oid:`` for OID issuers, then prefix."""
    if issuer is None:
        return default
    if issuer in table:
        return table[issuer]
    if _is_oid(issuer):
        return "urn:oid:" + issuer
    return prefix + quote(issuer, safe="")


NO_ISSUER = ""


def issuer_for(system: str, *, default: str, prefix: str, table: Mapping[str, str]) -> str | None:
    """Inverse of :func:`system_for`: NO_ISSUER for the default system, None for a system we never emit."""
    if system == default:
        return NO_ISSUER
    for issuer, sys in table.items():
        if sys == system:
            return issuer
    if system.startswith("urn:oid:") and _is_oid(system[8:]) and system[8:] not in table:
        return system[8:]
    if system.startswith(prefix) and len(system) > len(prefix):
        issuer = unquote(system[len(prefix) :])
        if issuer not in table and not _is_oid(issuer):
            return issuer
    return None


def _is_oid(text: str) -> bool:
    parts = text.split(".")
    return len(parts) > 1 and all(p.isdigit() and p.isascii() for p in parts)
