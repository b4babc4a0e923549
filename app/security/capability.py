"""Capability URLs for WADO-RS (issue 12, gateway + ``wado_access = "capability"``): a signed, short-lived grant to
retrieve one study, carried in the path of a contained Endpoint's address (``{root}/dicomweb/c/{capability}``).

Argonaut SMART Imaging Access (shared/docs/wado-gateway.md §1): with ``requires-access-token`` false "the address
itself is a capability URL": it must be cryptographically protected, appending WADO-RS paths must not widen it (a
substituted study UID is refused), and it is short-lived, expiring no later than the token it was issued for.

Form: ``base64url(payload) "." base64url(mac)``, no padding, so a URL path segment with no ``/`` or ``%``.
``payload`` is compact JSON ``{"v": 1, "k": key id, "e": expiry, "s": study UID, "p": patient or null}``; ``mac`` is
HMAC-SHA256 (RFC 2104) with the signing key over a domain-separation label and the payload bytes. The key id is the
first 8 hex digits of SHA-256 of the key: it names the key without revealing it. The payload is signed, not
encrypted: it names the study and the token's patient, which the study's own DICOM headers name too, and anyone
holding the URL may read those anyway (the URL is the permission, like the bearer token it stands for).

Keys rotate: :func:`issue` signs with the first key, :func:`verify` accepts any key in the list, so a new key is
added first everywhere, then put first; a key taken out of the list revokes every capability it signed. Checks are
made when a request is accepted (a response already streaming may finish, as the guide allows).

Pure: stdlib only, no clock of its own (``now`` is passed in).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from .context import Unauthorized

VERSION: Final = 1
MAX_LENGTH: Final = 1024  # a capability longer than this is refused unread (bounded work for junk input)
_LABEL: Final = b"imaging-facade/wado-capability/v1\x00"  # domain separation: this MAC signs nothing else
_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_INVALID: Final = "the capability is not valid"  # one fixed message: never echo input, never say which check failed


@dataclass(frozen=True)
class CapabilityGrant:
    """What a verified capability allows: retrieving ``study_uid`` until ``expires_at`` (epoch seconds), within
    ``patient``'s context when the token it was issued for had one."""

    study_uid: str
    expires_at: float
    patient: str | None


def key_id(key: str) -> str:
    """First 8 hex digits of SHA-256 of the key: which key signed, without revealing it."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def issue(
    study_uid: str,
    *,
    keys: Sequence[str],
    ttl: float,
    not_after: float | None,
    now: float,
    patient: str | None = None,
) -> str:
    """A capability for ``study_uid``, signed with ``keys[0]``, valid until ``min(now + ttl, not_after)`` (the
    token's ``exp``), rounded down to a whole second so it never outlives the token."""
    if not keys:
        raise ValueError("no capability key to sign with")
    expiry = now + ttl if not_after is None else min(now + ttl, not_after)
    body = {"v": VERSION, "k": key_id(keys[0]), "e": math.floor(expiry), "s": study_uid, "p": patient}
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()
    return f"{_b64(payload)}.{_b64(_mac(keys[0], payload))}"


def verify(capability: str, study_uid: str | None, *, keys: Sequence[str], now: float, skew: float) -> CapabilityGrant:
    """The grant of a genuine, unexpired capability for ``study_uid``; else :class:`Unauthorized` with one fixed
    message (malformed, over-long, tampered, signed by no listed key, another study, expired past ``skew``).
    ``study_uid`` None: a request whose path names no study (a QIDO-RS search at the root, issue 20), which the
    caller confines to the grant's study."""
    if len(capability) > MAX_LENGTH or not _SHAPE.fullmatch(capability):
        raise Unauthorized(_INVALID)
    encoded_payload, encoded_mac = capability.split(".")
    payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
    if payload is None or mac is None:
        raise Unauthorized(_INVALID)
    # Every key is tried, each with a constant-time compare, before anything in the payload is believed.
    signer = None
    for key in keys:
        if hmac.compare_digest(_mac(key, payload), mac):
            signer = key
    if signer is None:
        raise Unauthorized(_INVALID)
    body = _body(payload)
    if body is None or body["k"] != key_id(signer):
        raise Unauthorized(_INVALID)
    if (
        study_uid is not None and body["s"] != study_uid
    ):  # the path names another study than the one granted: editing it cannot widen it
        raise Unauthorized(_INVALID)
    if now > body["e"] + skew:
        raise Unauthorized(_INVALID)
    return CapabilityGrant(study_uid=body["s"], expires_at=float(body["e"]), patient=body["p"])


def _mac(key: str, payload: bytes) -> bytes:
    return hmac.new(key.encode(), _LABEL + payload, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """Strict base64url without padding: only the canonical spelling decodes (a changed unused trailing bit must
    not yield the same bytes, or an edited capability would still verify)."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64(data) == text else None


def _body(payload: bytes) -> dict[str, Any] | None:
    """The signed payload, if it has exactly the expected fields and types (signed by us, so this only guards
    against a payload written by an older or newer version)."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict) or set(body) != {"v", "k", "e", "s", "p"} or body["v"] != VERSION:
        return None
    expiry, patient = body["e"], body["p"]
    if not isinstance(expiry, int) or isinstance(expiry, bool) or not isinstance(body["s"], str):
        return None
    if not isinstance(body["k"], str) or not (patient is None or isinstance(patient, str)):
        return None
    return body
