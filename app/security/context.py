"""What an access token allows, and the errors that say no: :class:`AuthContext` (scopes and patient context),
its isolation key, and 401 :class:`Unauthorized` / 403 :class:`Forbidden` with RFC 6750 §3 challenges.

Pure: the decisions of the authorizer (app.security.auth) once a token is known to be genuine (app.security.tokens).
The isolation key is described in app.security.auth.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final

from ..errors import FacadeError
from .scopes import ALL, LETTER, LEVELS, Interaction, Level, Scopes

logger = logging.getLogger(__name__)

REALM: Final = "imaging-fhir-facade"
_UNQUOTABLE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")  # RFC 6750 §3 attribute value characters


# ---------------------------------------------------------------------------------------------------- errors


def challenge(
    realm: str = REALM, *, error: str | None = None, description: str | None = None, scope: str | None = None
) -> str:
    """An RFC 6750 §3 ``WWW-Authenticate`` value: ``Bearer realm="...", error="...", error_description="..."``."""
    params = [("realm", realm), ("error", error), ("error_description", description), ("scope", scope)]
    # §3: error, error_description and scope values use %x20-21 / %x23-5B / %x5D-7E only (no '"' or '\').
    quoted = [f'{k}="{_UNQUOTABLE.sub("", v)}"' for k, v in params if v is not None]
    return "Bearer " + ", ".join(quoted)


class Unauthorized(FacadeError):
    """401: no valid bearer token. ``error=None`` for a request without one (RFC 6750 §3.1: no error code then)."""

    status, code = 401, "login"

    def __init__(self, message: str, *, error: str | None = "invalid_token", realm: str = REALM) -> None:
        super().__init__(message)
        self.error = error
        value = challenge(realm, error=error, description=message) if error else challenge(realm)
        self.__dict__["headers"] = {"WWW-Authenticate": value}  # per instance; the class attribute stays {}


class Forbidden(FacadeError):
    """403: a valid token that does not allow the request. With ``scope``: RFC 6750 §3.1 ``insufficient_scope``."""

    status, code = 403, "forbidden"

    def __init__(self, message: str, *, scope: str | None = None, realm: str = REALM) -> None:
        super().__init__(message)
        if scope is not None:
            value = challenge(realm, error="insufficient_scope", description=message, scope=scope)
            self.__dict__["headers"] = {"WWW-Authenticate": value}


# ---------------------------------------------------------------------------------------------------- context


def isolation_key(patient: str | None, scopes: Scopes, identity: Sequence[str | None] = ()) -> str:
    """SHA-256 (hex) of the patient context, the sorted grant set and an optional caller identity (module doc)."""
    material = json.dumps(["smart-isolation-v1", patient or "", sorted(scopes.grants), list(identity)])
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class User:
    """Who the token says the user is, as far as it says: SMART's ``fhirUser`` (a reference to the user's FHIR
    resource) and the OpenID Connect standard claims ``name``, ``family_name``, ``given_name``. Not an
    authorization input: it names the author of what the user creates (app.planning.manifest_input.author)."""

    fhir_user: str | None = None
    name: str | None = None
    family_name: str | None = None
    given_name: str | None = None


@dataclass(frozen=True)
class AuthContext:
    """Who is asking and what the token allows. ``patient`` is a FHIR Patient id (launch context) or None."""

    subject: str | None
    client_id: str | None
    scopes: Scopes
    patient: str | None = None
    token: str | None = field(default=None, repr=False)  # the raw bearer token, for forwarding to the PACS only
    expires_at: float | None = None  # epoch seconds (the token's exp)
    user: User = field(default=User(), repr=False)  # names, not policy: left out of the isolation keys

    @cached_property
    def cache_key(self) -> str:
        """Shared by callers whose authorization is identical: same patient context, same grants (module doc)."""
        return isolation_key(self.patient, self.scopes)

    @cached_property
    def private_cache_key(self) -> str:
        """:attr:`cache_key` narrowed to this subject and client: for answers the PACS computed for the caller."""
        return isolation_key(self.patient, self.scopes, (self.subject, self.client_id))

    def require(
        self, resource_type: str, interaction: Interaction, *, levels: Collection[Level] = LEVELS
    ) -> str | None:
        """The patient the request is confined to, None when unconfined; Forbidden when nothing grants it.

        A user- or system-level grant is unconfined: the facade has no user or client policy of its own and trusts
        the authorization server that issued the scope (SMART "scopes are used to delegate access"). A patient-level
        grant confines to the token's ``patient``; without one it grants nothing (SMART 2.x: granting patient-level
        scopes SHALL come with a ``patient`` launch context). Grants are not combined: the broadest single grant
        decides. ``levels`` lets the caller refuse a level outright (e.g. ``("patient", "user")`` where Backend
        Services, system scopes, are not offered).
        """
        granted = self.scopes.context(resource_type, interaction) & frozenset(levels)
        if granted - {"patient"}:
            return None
        if "patient" in granted:
            if self.patient is None:
                raise Forbidden("a patient-level scope needs a patient context, and the access token has none")
            return self.patient
        letter = LETTER[interaction]
        needed = " ".join(f"{level}/{resource_type}.{letter}" for level in LEVELS if level in levels)
        if self.scopes.restricted(resource_type, interaction):
            message = f"the access token allows {interaction} on {resource_type} only with search restrictions, "
            message += "which this server does not enforce"
        else:
            message = f"the access token does not allow {interaction} on {resource_type}"
        raise Forbidden(message, scope=needed)


OPEN: Final = AuthContext(subject=None, client_id=None, scopes=ALL)


def confine_patients(restriction: str | None, requested: Sequence[str]) -> tuple[str, ...]:
    """The patient ids a search may use under ``restriction`` (from :meth:`AuthContext.require`).

    ``requested`` is every patient id the search names (all values of every ``patient``/``subject`` parameter,
    reduced to logical ids in the token's namespace). Unconfined: unchanged. Confined and none named: the token's
    patient, as an implicit filter. Confined and any other patient named: 403, not an empty Bundle (Argonaut SMART
    Imaging Access, "Access control").
    """
    if restriction is None:
        return tuple(requested)
    if any(p != restriction for p in requested):
        raise Forbidden("the search names a patient outside the access token's patient context")
    return (restriction,)
