"""Which cached answers a change in the PACS touches (issue 22: "invalidate precisely instead of guessing").

Before this, every change an archive's feed reported cleared all of its cached answers, so while a study was being
stored (a change every second) every patient's search missed at once, once a second (bench/README.md, "Change
feed": cached search rate during ingestion 0.09-0.42x of the TTL-only facade's).

Now a change is resolved to **scopes** (app.pacs.changes: the patient and the study it is in) and the archive's
:class:`ChangeClock` remembers, per scope, the feed position of its last change. A QIDO query has scopes too
(:func:`query_scopes`): the PatientIDs it asks for, else the Study Instance UIDs, else none (it may match anything,
so it depends on every change). A cached answer is keyed on the query's :meth:`ChangeClock.stamp`, the latest
position among its scopes: a change in one of them moves the stamp, and the answer is not found again; a change
elsewhere leaves it. Feed positions only grow, so a stamp moves exactly when one of its scopes changed.

Why feed positions and not a counter of our own: with a shared Redis cache, keys made by different processes must
mean the same thing. Every process follows the feed itself (each runs its follower), and the archive numbers its
changes once for all of them (Orthanc's ``Seq``), so a key names the same state of the archive in every process. A
process that has not yet read a change uses the older stamp, for at most one poll interval. A feed that loses its
place (reset, gap, unreadable) does not use this: it clears everything, as before, and moves the shared generation
(app.pacs.cache.CachedQido.invalidate), after which the clock starts again (:meth:`ChangeClock.reset`).

Matching is deliberately wide: PatientIDs are compared without case or surrounding spaces, whatever
IssuerOfPatientID (two issuers sharing a PatientID invalidate each other: more misses, never a stale answer), and a
query with a wildcard in its PatientID or UIDs depends on every change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from ..dicom.qido import QidoQuery

__all__ = ["ChangeClock", "Scopes", "patient_scope", "query_scopes", "study_scope"]

Scopes = tuple[str, ...]  # sorted scope names; None where a query has none (it depends on every change)

_PATIENT_KEYS = ("PatientID", "00100020")
_STUDY_KEYS = ("StudyInstanceUID", "0020000D")


def patient_scope(patient_id: str) -> str:
    return "p:" + patient_id.strip().casefold()


def study_scope(uid: str) -> str:
    return "s:" + uid.strip()


def query_scopes(query: QidoQuery) -> Scopes | None:
    """The scopes whose changes can alter this query's answer; None: any change can (no exact PatientID or Study
    Instance UID in it). Lists are comma-separated (PS3.18 §8.3.4.1; app.dicom.qido.put_pattern)."""
    for keys, scope in ((_PATIENT_KEYS, patient_scope), (_STUDY_KEYS, study_scope)):
        values = [v for k, v in query.params if k in keys]
        if len(values) != 1:  # absent (next kind), or asked twice (not built here: trust nothing)
            if values:
                return None
            continue
        items = values[0].split(",")
        if any(not item.strip() or "*" in item or "?" in item for item in items):
            return None
        return tuple(sorted({scope(item) for item in items}))
    return None


class ChangeClock:
    """The feed position of each scope's last change, and of the last change of all (module docstring).

    ``keep``: seconds a scope's position is remembered (the cache's ``ttl + stale_ttl``): a cached answer older than
    that has expired anyway, so a forgotten scope (stamp 0 again) can only miss answers made after its change.
    ``max_scopes`` bounds the memory: past it, the oldest half is forgotten early, which is safe only together with
    a new generation, so the caller is told to clear everything (:meth:`note` returns False)."""

    def __init__(self, *, keep: float, max_scopes: int = 200_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._keep = keep
        self._max = max_scopes
        self._clock = clock
        self._seen: dict[str, tuple[int, float]] = {}  # scope -> (position, when noted); insertion = noting order
        self.latest = 0  # the position of the last change of all: what a query without scopes depends on

    def stamp(self, scopes: Scopes | None) -> int:
        if scopes is None:
            return self.latest
        seen = self._seen
        return max((seen[s][0] for s in scopes if s in seen), default=0)

    def note(self, scopes: Iterable[str], position: int) -> bool:
        """These scopes changed at ``position`` (a feed position, growing). False when the clock had to forget
        scopes it may still need: the caller then clears every cached answer."""
        now = self._clock()
        self.latest = max(self.latest, position)
        for scope in scopes:
            self._seen.pop(scope, None)  # re-inserted at the end: the dict stays in noting order
            self._seen[scope] = (position, now)
        self._forget(now)
        if len(self._seen) > self._max:
            for scope in list(self._seen)[: len(self._seen) // 2]:
                del self._seen[scope]
            return False
        return True

    def reset(self) -> None:
        """Forget every position (with a new generation: the feed lost its place, or everything was cleared)."""
        self._seen.clear()
        self.latest = 0

    def _forget(self, now: float) -> None:
        seen = self._seen
        while seen:
            scope, (_, noted) = next(iter(seen.items()))
            if now - noted <= self._keep:
                break
            del seen[scope]

    def __len__(self) -> int:
        return len(self._seen)
