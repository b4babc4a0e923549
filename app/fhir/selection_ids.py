"""Deterministic, reversible FHIR ids for "group k of KOS <SOP Instance UID>" (pure).

A KOS that selects instances of n series becomes n R5 ImagingSelection resources (one series each), numbered
k = 0..n-1 in the document's order. Their ids must be stable, fit the FHIR ``id`` type (R5 datatypes.html#id:
``[A-Za-z0-9\\-\\.]{1,64}``) and give the KOS back, so ``GET ImagingSelection/<id>`` needs no database. A UID alone
can be 64 characters (PS3.5 §9.1), so ``<uid>-<k>`` may not fit. Instead:

- the UID, a string over the 11 characters ``0-9`` and ``.``, is read as a base-11 numeral (``.`` is digit 10)
  behind a leading sentinel digit 1, so leading zeros and the length survive: ``"0.1"`` → 1·11³ + 0·11² + 10·11 + 1;
- that number is written in base 62 (``0-9A-Za-z``), at most 38 characters for a 64-character UID
  (11⁶⁵ < 62³⁸), then ``-`` and k in decimal: ``<base62>-<k>``.

Any string of digits and dots of length 1..64 round-trips, so non-conformant UIDs seen in the wild (a leading
zero in a component) still do. :func:`decode` accepts only canonical spellings (no leading ``0`` in either part,
a sentinel of 1), so one selection has exactly one id. A KOS UID that is not digits and dots at all (broken data)
gets a hashed id, ``x.<hash>-<k>``, which :func:`decode` does not invert (like app.fhir.patient_ids' hashed ids).
"""

from __future__ import annotations

import hashlib
import re

_UID_CHARS = "0123456789."
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGIT = {c: i for i, c in enumerate(_BASE62)}
_MAX_UID = 64  # PS3.5 §9.1: a UID is at most 64 characters
_UID = re.compile(r"[0-9.]{1,64}", re.ASCII)
_ID = re.compile(r"([0-9A-Za-z]+)-(0|[1-9][0-9]*)", re.ASCII)
_HASHED = "x."


def encode(kos_uid: str, k: int) -> str:
    """The id of group ``k`` (0-based) of the KOS with SOP Instance UID ``kos_uid``."""
    if k < 0:
        raise ValueError("k must be >= 0")
    if not _UID.fullmatch(kos_uid):
        digest = hashlib.sha256(kos_uid.encode()).hexdigest()[:40]
        return f"{_HASHED}{digest}-{k}"
    number = 1
    for char in kos_uid:
        number = number * 11 + _UID_CHARS.index(char)
    return f"{_base62(number)}-{k}"


def decode(fhir_id: str) -> tuple[str, int] | None:
    """``(kos_uid, k)`` of an id made by :func:`encode`; None for anything else (hashed ids included)."""
    if len(fhir_id) > 64:
        return None
    match = _ID.fullmatch(fhir_id)
    if match is None:
        return None
    token, k_text = match.groups()
    if token[0] == "0":  # a leading zero digit: a second spelling of the same number
        return None
    number = 0
    for char in token:
        number = number * 62 + _DIGIT[char]
    digits: list[str] = []
    while number >= 11:
        number, digit = divmod(number, 11)
        digits.append(_UID_CHARS[digit])
        if len(digits) > _MAX_UID:
            return None
    if number != 1 or not digits:  # the sentinel must be exactly 1, and the UID non-empty
        return None
    return "".join(reversed(digits)), int(k_text)


def _base62(number: int) -> str:
    out: list[str] = []
    while number:
        number, digit = divmod(number, 62)
        out.append(_BASE62[digit])
    return "".join(reversed(out))
