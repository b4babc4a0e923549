"""SMART on FHIR clinical scopes, v1 and v2, parsed into what they grant (pure).

Grammar (SMART App Launch 2.x, "Scopes for requesting FHIR Resources" / "Clinical Scope Syntax")::

    ( patient | user | system ) "/" ( ResourceType | "*" ) "." permissions [ "?" param=value *( "&" param=value ) ]

``permissions`` is either a v2 in-order subset of ``cruds`` (``c`` create, ``r`` read/vread, ``u`` update, ``d``
delete, ``s`` search) or a v1 word, read with the semantics SMART 2.x asks v2 servers to give them:
``read`` ⇒ ``rs``, ``write`` ⇒ ``cud``, ``*`` ⇒ ``cruds``. ``Observation.rs`` is the same grant as
``Observation.r Observation.s`` ("Scope Equivalence"), so scopes are reduced to one grant per letter.

Decisions:

* **Out-of-order or undefined letters** (``.sr``, ``.dus``, ``.x``) grant nothing: SMART says such requests "MAY be
  ignored", and ignoring cannot read ``.read`` as ``.rd`` and grant a delete.
* **Restricted scopes** (v2 ``?param=value``, e.g. ``patient/ImagingStudy.rs?modality=CT``) are parsed and kept
  (:attr:`Scope.query`), but grant **nothing**. Honouring one means enforcing its search restriction on every
  read, search and ``_include`` path, including reads, where no search runs, and SMART itself calls modifiers and
  chains experimental; a facade that cannot prove it enforced the restriction must not widen it into the
  unrestricted scope. A token holding only restricted scopes therefore gets 403 (fail closed), and one holding
  both ``patient/ImagingStudy.rs?modality=CT`` and ``patient/ImagingStudy.rs`` is governed by the latter.
  :meth:`Scopes.restricted` lists them, so an error message can say why access was refused.
* **Non-resource scopes** (``openid``, ``fhirUser``, ``profile``, ``launch``, ``launch/patient``,
  ``offline_access``, ``online_access``, anything unknown) grant no data access; they are kept in
  :attr:`Scopes.other` for information only.
* A scope token follows RFC 6749 §3.3 (``1*NQCHAR``, space-separated); resource types are FHIR type names
  (``[A-Z][A-Za-z]*``), matched case-sensitively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, cast

Level = Literal["patient", "user", "system"]
Interaction = Literal["create", "read", "update", "delete", "search"]

LEVELS: Final[tuple[Level, ...]] = ("patient", "user", "system")
# SMART 2.x: the letter that grants each FHIR REST interaction.
LETTER: Final[dict[Interaction, str]] = {"create": "c", "read": "r", "update": "u", "delete": "d", "search": "s"}
CRUDS: Final = "cruds"
# SMART 2.x "v1 scopes ... SHOULD process ... with the following semantics in v2".
V1_PERMISSIONS: Final[dict[str, str]] = {"read": "rs", "write": "cud", "*": "cruds"}

_SCOPE = re.compile(
    r"(?P<level>patient|user|system)/(?P<resource>[A-Z][A-Za-z]{0,63}|\*)\.(?P<perm>[A-Za-z*]+)(?:\?(?P<query>.*))?",
    re.ASCII,
)
_V2 = re.compile(r"c?r?u?d?s?", re.ASCII)
_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]*", re.ASCII)
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_NQCHARS = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+", re.ASCII)


@dataclass(frozen=True)
class Scope:
    """One clinical scope: ``level/resource.permissions[?query]``; ``permissions`` is in-order ``cruds`` letters."""

    level: Level
    resource: str  # a FHIR resource type, or "*"
    permissions: str  # canonical v2 letters, e.g. "rs" (v1 "read" is stored as "rs")
    query: tuple[tuple[str, str], ...] = ()  # v2 restriction, in the order given
    raw: str = field(default="", compare=False)

    @property
    def restricted(self) -> bool:
        return bool(self.query)

    def covers(self, resource_type: str, interaction: Interaction) -> bool:
        """Whether the scope names this type and interaction, ignoring any query restriction."""
        return self.resource in ("*", resource_type) and LETTER[interaction] in self.permissions

    def grants(self, resource_type: str, interaction: Interaction) -> bool:
        """Whether the scope grants the interaction outright (restricted scopes never do; see the module doc)."""
        return not self.query and self.covers(resource_type, interaction)


def parse_scope(token: str) -> Scope | None:
    """A clinical scope, or None for anything else (identity/launch scopes, malformed or out-of-order ones)."""
    m = _SCOPE.fullmatch(token)
    if m is None or not _NQCHARS.fullmatch(token):
        return None
    perm, query_text = m["perm"], m["query"]
    if perm in V1_PERMISSIONS:
        if query_text is not None:  # restrictions are a v2 feature; a v1 word with one is not a defined scope
            return None
        letters = V1_PERMISSIONS[perm]
    elif perm and _V2.fullmatch(perm):
        letters = perm
    else:
        return None
    query: tuple[tuple[str, str], ...] = ()
    if query_text is not None:
        parsed = _parse_query(query_text)
        if parsed is None:
            return None
        query = parsed
    return Scope(cast(Level, m["level"]), m["resource"], letters, query, raw=token)


def _parse_query(text: str) -> tuple[tuple[str, str], ...] | None:
    """``param=value&...`` (SMART 2.x "Finer-grained resource constraints"); values kept as written."""
    if not text:
        return None
    pairs: list[tuple[str, str]] = []
    for item in text.split("&"):
        name, eq, value = item.partition("=")
        if not eq or not value or not _PARAM.fullmatch(name):
            return None
        pairs.append((name, value))
    return tuple(pairs)


@dataclass(frozen=True)
class Scopes:
    """The clinical scopes a token carries, and what they grant."""

    clinical: tuple[Scope, ...] = ()
    other: tuple[str, ...] = ()  # non-resource or unparseable scope tokens: they grant no data access

    @classmethod
    def parse(cls, scope: str | Iterable[str] | None) -> Scopes:
        """From an OAuth ``scope`` string (space-separated, RFC 6749 §3.3) or a list of scope tokens (``scp``)."""
        if scope is None:
            return cls()
        tokens = scope.split() if isinstance(scope, str) else [t for item in scope for t in str(item).split()]
        clinical: list[Scope] = []
        other: list[str] = []
        for token in dict.fromkeys(tokens):
            parsed = parse_scope(token)
            if parsed is None:
                other.append(token)
            else:
                clinical.append(parsed)
        return cls(tuple(clinical), tuple(other))

    def allows(self, resource_type: str, interaction: Interaction) -> bool:
        """Whether some unrestricted scope, at any level, grants the interaction on the type."""
        return any(s.grants(resource_type, interaction) for s in self.clinical)

    def context(self, resource_type: str, interaction: Interaction) -> frozenset[Level]:
        """The levels (patient, user, system) whose unrestricted scopes grant the interaction on the type."""
        return frozenset(s.level for s in self.clinical if s.grants(resource_type, interaction))

    def restricted(self, resource_type: str, interaction: Interaction) -> tuple[Scope, ...]:
        """Scopes that would grant the interaction but carry a query restriction (and so grant nothing here)."""
        return tuple(s for s in self.clinical if s.restricted and s.covers(resource_type, interaction))

    @property
    def grants(self) -> frozenset[str]:
        """The unrestricted grants, one ``level/Type.letter`` per letter: equal for equivalent scope sets.

        ``patient/ImagingStudy.read`` and ``patient/ImagingStudy.r patient/ImagingStudy.s`` both give
        ``{"patient/ImagingStudy.r", "patient/ImagingStudy.s"}``; identity and restricted scopes add nothing.
        """
        return frozenset(
            f"{s.level}/{s.resource}.{letter}" for s in self.clinical if not s.restricted for letter in s.permissions
        )

    def __str__(self) -> str:
        return " ".join([s.raw for s in self.clinical] + list(self.other))


# Everything, at system level: the scope set of the open (unauthenticated) mode.
ALL: Final = Scopes((Scope("system", "*", CRUDS, raw="system/*.cruds"),))
