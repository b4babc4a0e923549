"""FHIR search parameters → a typed :class:`SearchRequest` (pure; R4 search.html).

Rules applied here, in one place:
- several occurrences of a parameter are AND-ed; commas inside one occurrence are OR-ed (search.html#combining);
  ``\\,`` ``\\|`` ``\\$`` ``\\\\`` are escapes (search.html#escaping);
- unknown parameters are ignored and left out of the ``self`` link, or rejected under ``Prefer: handling=strict``
  (http.html#prefer); an unknown *modifier* on a known parameter is always rejected, since ignoring it would change
  the meaning of the search;
- malformed values (bad date, bad prefix, ``_count=abc``) are 400;
- values that are well formed but can never match (a foreign identifier system, an id that is not ours) keep the
  criterion with no values, which the planner turns into an empty result without asking the PACS.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import InvalidRequest, UnsupportedSearch
from .dates import DateCriterion, parse_search_date
from .search_params import IMAGING_STUDY, LAST_UPDATED_TYPES, RESULT_PARAMS, SUMMARIES, ResourceSearch
from .search_values import DICOM_UID_SYSTEM as DICOM_UID_SYSTEM
from .search_values import PARSERS, Parser
from .search_values import EhrPatient as EhrPatient
from .search_values import PatientKey as PatientKey
from .search_values import SearchContext as SearchContext
from .search_values import Token as Token
from .search_values import is_fhir_id as is_fhir_id
from .search_values import is_uid as is_uid
from .search_values import split_or as split_or


@dataclass(frozen=True)
class Criterion:
    name: str
    values: tuple[Any, ...]  # OR-ed, typed per parameter; empty: matches nothing
    param: str  # "name[:modifier]" or "name.chain" as sent
    text: str  # the value as sent, for the self link
    # "missing" (values: (bool,)), "not" (values: codes to exclude), "exact" or "contains" (strings); "" otherwise
    modifier: str = ""


STRING_MODES = ("", "exact", "contains")  # search.html#string


@dataclass(frozen=True)
class SearchRequest:
    criteria: tuple[Criterion, ...] = ()
    count: int = 20
    offset: int = 0
    includes: frozenset[str] = frozenset()
    pretty: bool = False
    summary: str = "false"  # R4 _summary: true | data | count | false
    sort: str | None = None  # "started" or "-started"
    total: str = "none"  # R4 _total: none | estimate | accurate
    elements: frozenset[str] = frozenset()  # _elements: top-level elements to keep (empty: all)
    # _lastUpdated (issue 22): AND of OR-groups on the study's last change in the PACS, with the values as written
    last_updated: tuple[tuple[DateCriterion, ...], ...] = ()
    last_updated_text: tuple[str, ...] = ()

    @property
    def include_endpoint(self) -> bool:
        return "ImagingStudy:endpoint" in self.includes

    @property
    def include_patient(self) -> bool:
        return "ImagingStudy:patient" in self.includes

    def all(self, name: str, *, modifier: str = "") -> list[Criterion]:
        return [c for c in self.criteria if c.name == name and c.modifier == modifier]

    def strings(self, name: str) -> list[Criterion]:
        """The string criteria on ``name``, whatever their matching modifier ("", exact, contains)."""
        return [c for c in self.criteria if c.name == name and c.modifier in STRING_MODES]

    @property
    def matches_nothing(self) -> bool:
        return any(not c.values for c in self.criteria)

    def link_params(self, *, offset: int | None = None) -> list[tuple[str, str]]:
        """The canonical parameters of this search, for self/next/previous links (stable across pages)."""
        out = [(c.param, c.text) for c in self.criteria]
        out += [("_include", include) for include in sorted(self.includes)]
        if self.summary != "false":
            out.append(("_summary", self.summary))
        if self.sort:
            out.append(("_sort", self.sort))
        if self.total != "none":
            out.append(("_total", self.total))
        if self.elements:
            out.append(("_elements", ",".join(sorted(self.elements))))
        out += [("_lastUpdated", text) for text in self.last_updated_text]
        out.append(("_count", str(self.count)))
        off = self.offset if offset is None else offset
        if off:
            out.append(("_offset", str(off)))
        return out


@dataclass
class _Results:
    """The result parameters (search.html#return) as they are read; becomes part of the SearchRequest."""

    count: int
    offset: int = 0
    pretty: bool = False
    summary: str = "false"
    total: str = "none"
    sort: str | None = None
    includes: set[str] = field(default_factory=set)
    elements: frozenset[str] = frozenset()
    last_updated: list[tuple[DateCriterion, ...]] = field(default_factory=list)
    last_updated_text: list[str] = field(default_factory=list)


def parse_search(
    items: Iterable[tuple[str, str]], ctx: SearchContext, resource: ResourceSearch = IMAGING_STUDY
) -> SearchRequest:
    criteria: list[Criterion] = []
    parsers = PARSERS[resource.type]
    results = _Results(count=ctx.default_count)
    seen_result: set[str] = set()
    for key, value in items:
        # search.html#chaining: "name[:Type].chain" or "name:modifier"; split the chain off first.
        head, _, chain = key.partition(".")
        base, sep, modifier = head.partition(":")
        if chain and modifier == "Patient":
            sep = modifier = ""  # the typed chain subject:Patient.identifier is the plain chain here
        if base in RESULT_PARAMS and not sep and not chain:
            if base in seen_result and base != "_include":
                raise InvalidRequest(f"parameter {base} given more than once")
            seen_result.add(base)
            _result_param(base, value, ctx, resource, results)
            continue
        if base == "_lastUpdated":
            # Never ignored silently: an app syncing "what changed since" would re-read everything, or miss nothing
            # it can tell. DICOMweb answers carry no time of change (PS3.18 §10.6; issue 22): only an archive whose
            # own API says when a study changed (pacs_kind = orthanc) answers it.
            if resource.type not in LAST_UPDATED_TYPES:
                raise UnsupportedSearch(f"_lastUpdated is not supported on {resource.type}: it has no time of change")
            if not ctx.last_updated:
                raise UnsupportedSearch(f"_lastUpdated is not supported here: {ctx.last_updated_refusal}")
            if sep or chain:
                raise UnsupportedSearch(f"{key} is not supported (no modifiers on _lastUpdated)")
            if value:
                try:
                    now = ctx.now or datetime.now(UTC)  # ap: 10 % of the gap to now (search.html#prefix)
                    group = tuple(parse_search_date(v, ctx.search_zone, approximate_at=now) for v in split_or(value))
                except ValueError as exc:
                    raise InvalidRequest(f"_lastUpdated: {exc}") from None
                results.last_updated.append(group)
                results.last_updated_text.append(value)
            continue
        spec = resource.by_name.get(base)
        if spec is None:
            if ctx.strict:
                raise UnsupportedSearch(f"search parameter {key!r} is not supported")
            continue
        if chain and chain not in spec.chains:
            raise UnsupportedSearch(f"chained parameter {key!r} is not supported")
        if sep and modifier not in spec.modifiers:
            raise UnsupportedSearch(f"modifier :{modifier} is not supported on {base}")
        if value == "":
            continue  # an empty value is ignored (search.html: parameters without a value)
        criterion = _criterion(parsers[spec.criterion], spec.criterion, key, modifier, chain, value, ctx)
        if criterion is not None:
            criteria.append(criterion)
    r = results
    if r.count == 0:
        # search.html#count: _count=0 asks how many match, i.e. _summary=count (an exact total, no entries); it
        # is what fhirpy's count() sends. It wins over another _summary, which would describe entries not sent.
        r.summary = "count"
    return SearchRequest(
        tuple(criteria),
        r.count,
        r.offset,
        frozenset(r.includes),
        r.pretty,
        r.summary,
        r.sort,
        r.total,
        r.elements,
        tuple(r.last_updated),
        tuple(r.last_updated_text),
    )


def _criterion(
    parser: Parser, base: str, key: str, modifier: str, chain: str, value: str, ctx: SearchContext
) -> Criterion | None:
    if modifier == "missing":  # search.html#missing
        if value not in ("true", "false"):
            raise InvalidRequest(f"{key} takes true or false")
        return Criterion(base, (value == "true",), key, value, "missing")
    parsed = parser(base, modifier or chain, value, ctx)
    if modifier == "not":  # excluding values that can never occur excludes nothing
        return Criterion(base, tuple(parsed), key, value, "not") if parsed else None
    # A string modifier, on the parameter (name:exact) or on a chained string (referrer.name:exact).
    mode = (modifier or chain.partition(":")[2]) if modifier in STRING_MODES else ""
    return Criterion(base, tuple(parsed), key, value, mode)


def _result_param(name: str, value: str, ctx: SearchContext, resource: ResourceSearch, results: _Results) -> None:
    if name == "_count":
        results.count = min(_non_negative(name, value), ctx.max_count)
    elif name == "_offset":
        results.offset = _non_negative(name, value)
    elif name == "_include":
        if value in resource.includes:
            results.includes.add(value)
        elif ctx.strict:
            raise UnsupportedSearch(f"_include={value} is not supported")
    elif name == "_pretty":
        if value not in ("true", "false"):
            raise InvalidRequest("_pretty must be true or false")
        results.pretty = value == "true"
    elif name == "_summary":
        if value not in SUMMARIES:
            raise InvalidRequest(f"_summary must be true, text, data, count or false, got {value[:40]!r}")
        results.summary = value
    elif name == "_total":
        # QIDO gives no count (PS3.18 §8.3.4.4): a total means reading every matching study row.
        if value not in ("none", "estimate", "accurate"):
            raise InvalidRequest(f"_total must be none, estimate or accurate, got {value[:40]!r}")
        results.total = value
    elif name == "_elements":
        # search.html#elements: unknown names are left out rather than refused.
        results.elements = frozenset(e.strip() for e in value.split(",")) & resource.elements
    elif name == "_sort":
        if value in resource.sorts:
            results.sort = value
        elif ctx.strict:
            keys = " or ".join(resource.sorts) or "no key"
            raise UnsupportedSearch(f"_sort={value[:60]} is not supported on {resource.type}; sort by {keys}")
    # _format is checked with the Accept header by app.http.fhir_http.negotiate


def _non_negative(name: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise InvalidRequest(f"{name} must be a non-negative integer, got {value[:40]!r}")
    return int(value)
