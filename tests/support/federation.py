"""Three small archives ("north", "south", "east") for the multi-source (federation) tests, and their ground truth.

    datasets, manifest = build_federation_data()        # {"north": [Dataset, ...], ...}, FederationManifest
    with start_federation() as fed:                      # three private Orthancs, loaded (the `federation` fixture)
        fed.source("south").dicomweb_url
        fed.manifest.studies_of("P-SHARED-1", "NORTH")   # the union a facade over all three must return

Each source is configured with an ``issuer``: the assigning authority (IssuerOfPatientID) of its rows that carry
none. Most rows carry none; a few carry one explicitly because they came from another archive. The *domain* of a
row is its stored IssuerOfPatientID, else its source's issuer; a patient is a (PatientID, domain) pair.

What is where (``SOURCES`` below; the test file ``tests/integration/test_federation_harness.py`` checks it):

- (a) ``P-SHARED-1`` (domain NORTH): two studies in north (no issuer stored) and one in south that was sent from
  north and so carries IssuerOfPatientID "NORTH".
- (b) the study ``split`` (``P-SPLIT-1``, domain NORTH) is held by north and south with different series in each
  copy: north has series 1 (CT) and 2 (CT), south has series 2 (the same three instances) and 3 (CR). South's copy
  carries IssuerOfPatientID "NORTH". The union has three series and ModalitiesInStudy CR\\CT.
- (c) ``MRN-COLLIDE`` names two people: Fischer^Hans in north (domain NORTH) and Tanaka^Yuki in east (domain EAST).
- (d) ``P-PAGE-1`` (domain NORTH, "Dvořák^Zoë^Marie", ISO_IR 192): seven studies, three in north, two in south and
  two in east (those four carry "NORTH"), seven distinct StudyDates, CT/MR/US/CR; one of them has an empty
  AccessionNumber and an empty StudyDescription, another no StudyDescription at all.
- (e) one person known as ``N-100`` in north and ``S-200`` in south (no issuer stored in either), who also has a
  national identifier: the PIXm persons (:meth:`FederationManifest.pix_persons`) cross-reference them.

Same seed, same UIDs, same bytes; a study held twice is rendered from one :class:`StudyTruth` per copy with the
same series specs, so the shared series is byte-identical in both archives.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from pydicom import Dataset

from tests.support.dataset import (
    SOP_CLASS_BY_MODALITY,
    InstanceTruth,
    SeriesTruth,
    StudyTruth,
    make_uid,
    render_study,
)
from tests.support.orthanc import OrthancServer, store

__all__ = [
    "COLLIDE_ID",
    "NATIONAL_SYSTEM",
    "PAGE_PATIENT",
    "SHARED_PATIENT",
    "SOURCES",
    "SPLIT_PATIENT",
    "SPLIT_STUDY",
    "SYSTEMS",
    "XREF_NORTH",
    "XREF_SOUTH",
    "FederatedStudy",
    "Federation",
    "FederationManifest",
    "FederationSource",
    "SourceTruth",
    "StudyCopy",
    "build_federation_data",
    "start_federation",
]

# (source name, its issuer), in the order a facade would list them.
SOURCES: tuple[tuple[str, str], ...] = (("north", "NORTH"), ("south", "SOUTH"), ("east", "EAST"))

SHARED_PATIENT = "P-SHARED-1"  # (a)
SPLIT_PATIENT = "P-SPLIT-1"  # (b)
SPLIT_STUDY = "split"  # (b) the key of the study held by north and south: manifest.uid_of(SPLIT_STUDY)
COLLIDE_ID = "MRN-COLLIDE"  # (c)
PAGE_PATIENT = "P-PAGE-1"  # (d)
XREF_NORTH = "N-100"  # (e)
XREF_SOUTH = "S-200"  # (e)

# FHIR identifier systems of the three domains (and of a national identifier no archive stores), as a PIXm manager
# knows them. A facade maps issuer -> system with its ``issuer_systems`` setting: FederationManifest.issuer_systems.
SYSTEMS: Mapping[str, str] = {
    "NORTH": "urn:oid:2.999.1.1",
    "SOUTH": "urn:oid:2.999.1.2",
    "EAST": "urn:oid:2.999.1.3",
}
NATIONAL_SYSTEM = "urn:oid:2.999.9.1"


# -- ground truth ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceTruth:
    """One archive: its name, its issuer, and the studies it holds (``issuer`` of each = IssuerOfPatientID as
    stored, None when absent)."""

    name: str
    issuer: str
    studies: tuple[StudyTruth, ...]

    def domain(self, study: StudyTruth) -> str:
        """The assigning authority a row of this archive belongs to: stored IssuerOfPatientID, else the source's."""
        return study.issuer if study.issuer is not None else self.issuer

    def study(self, uid: str) -> StudyTruth:
        for s in self.studies:
            if s.study_uid == uid:
                return s
        raise KeyError(uid)

    @property
    def study_uids(self) -> frozenset[str]:
        return frozenset(s.study_uid for s in self.studies)

    def studies_of(self, patient_id: str, domain: str) -> list[StudyTruth]:
        """This archive's copies of the studies of one patient (exact PatientID, domain as resolved here)."""
        return [s for s in self.studies if s.patient_id == patient_id and self.domain(s) == domain]

    @property
    def explicit_issuer_uids(self) -> frozenset[str]:
        """Studies whose rows carry IssuerOfPatientID explicitly."""
        return frozenset(s.study_uid for s in self.studies if s.issuer is not None)

    @property
    def n_series(self) -> int:
        return sum(s.n_series for s in self.studies)

    @property
    def n_instances(self) -> int:
        return sum(s.n_instances for s in self.studies)


@dataclass(frozen=True)
class StudyCopy:
    """One archive's copy of a study."""

    source: str
    domain: str
    study: StudyTruth  # as stored there: study.issuer is the stored IssuerOfPatientID or None


@dataclass(frozen=True)
class FederatedStudy:
    """A study as the union over every archive that holds it (what a facade over all sources should show)."""

    study_uid: str
    patient_id: str
    domain: str
    copies: tuple[StudyCopy, ...]  # in SOURCES order

    @property
    def truth(self) -> StudyTruth:
        """The first copy: patient and study attributes are the same in every copy by construction."""
        return self.copies[0].study

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(c.source for c in self.copies)

    @property
    def series(self) -> tuple[SeriesTruth, ...]:
        """Distinct series over all copies (by SeriesInstanceUID), first-seen order."""
        seen: dict[str, SeriesTruth] = {}
        for c in self.copies:
            for se in c.study.series:
                seen.setdefault(se.uid, se)
        return tuple(seen.values())

    @property
    def series_uids(self) -> frozenset[str]:
        return frozenset(se.uid for se in self.series)

    @property
    def instance_uids(self) -> frozenset[str]:
        return frozenset(i.uid for se in self.series for i in se.instances)

    def series_in(self, source: str) -> frozenset[str]:
        """The series UIDs one archive holds of this study (empty when it holds none)."""
        return frozenset(se.uid for c in self.copies if c.source == source for se in c.study.series)

    @property
    def modalities(self) -> list[str]:
        return sorted({se.modality for se in self.series})

    @property
    def n_series(self) -> int:
        return len(self.series)

    @property
    def n_instances(self) -> int:
        return len(self.instance_uids)

    @property
    def study_date(self) -> str | None:
        return self.truth.study_date

    @property
    def patient_name(self) -> str:
        return self.truth.patient_name


@dataclass(frozen=True)
class FederationManifest:
    """Exactly what each archive holds, and the unions a facade over all of them should answer with."""

    sources: tuple[SourceTruth, ...]
    keys: Mapping[str, str] = field(default_factory=dict)  # study key ("split", "page-n1", ...) -> Study UID
    persons: tuple[tuple[tuple[str, str], ...], ...] = ()  # PIXm persons: each its (system, value) identifiers

    # -- per source --

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sources)

    @property
    def issuers(self) -> dict[str, str]:
        """Source name -> issuer."""
        return {s.name: s.issuer for s in self.sources}

    @property
    def issuer_systems(self) -> dict[str, str]:
        """Issuer -> FHIR identifier system, as the PIXm persons use them (for the facade's ``issuer_systems``)."""
        return {s.issuer: SYSTEMS[s.issuer] for s in self.sources}

    def source(self, name: str) -> SourceTruth:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def uid_of(self, key: str) -> str:
        """The Study UID of a study key (see the specs in this module), e.g. ``uid_of(SPLIT_STUDY)``."""
        return self.keys[key]

    def copies(self) -> list[StudyCopy]:
        """Every stored copy (one per archive and study), in SOURCES order."""
        return [StudyCopy(src.name, src.domain(st), st) for src in self.sources for st in src.studies]

    # -- the union --

    def studies(self) -> list[FederatedStudy]:
        """Every distinct Study UID, each with its copies, in first-seen order."""
        grouped: dict[str, list[StudyCopy]] = {}
        for c in self.copies():
            grouped.setdefault(c.study.study_uid, []).append(c)
        result = []
        for uid, copies in grouped.items():
            first = copies[0]
            assert all(c.domain == first.domain and c.study.patient_id == first.study.patient_id for c in copies), uid
            result.append(FederatedStudy(uid, first.study.patient_id, first.domain, tuple(copies)))
        return result

    def study(self, uid: str) -> FederatedStudy:
        for s in self.studies():
            if s.study_uid == uid:
                return s
        raise KeyError(uid)

    def studies_of(self, patient_id: str, domain: str) -> list[FederatedStudy]:
        """The union of one patient's studies (exact PatientID, domain = stored issuer or the source's), newest
        StudyDate first, then by Study UID."""
        found = [s for s in self.studies() if s.patient_id == patient_id and s.domain == domain]
        return sorted(found, key=lambda s: (-int(s.study_date or 0), s.study_uid))

    def patients(self) -> list[tuple[str, str]]:
        """Distinct (PatientID, domain) pairs, first-seen order."""
        return list(dict.fromkeys((c.study.patient_id, c.domain) for c in self.copies()))

    def series_union(self, study_uid: str) -> frozenset[str]:
        return self.study(study_uid).series_uids

    def instance_union(self, study_uid: str) -> frozenset[str]:
        return self.study(study_uid).instance_uids

    # -- PIXm --

    def pix_persons(self) -> list[list[tuple[str, str]]]:
        """The persons for :class:`tests.support.pixm.PixmServer`: each a list of (system, value)."""
        return [list(p) for p in self.persons]

    def system_of(self, domain: str) -> str:
        return SYSTEMS[domain]


# -- the specs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Patient:
    patient_id: str
    name: str
    birth_date: str | None
    sex: str | None
    charset: str | None = None


@dataclass(frozen=True)
class _Series:
    number: int  # also the series' key within its study: the same number in two copies is the same series
    modality: str
    description: str | None
    body_part: str | None
    n_instances: int


@dataclass(frozen=True)
class _Study:
    key: str
    patient: _Patient
    date: str | None
    time: str | None
    accession: str | None  # None: present and empty (type 2)
    description: str | None  # None: absent; "": present and empty
    referrer: str | None
    series: tuple[_Series, ...]


_SHARED = _Patient(SHARED_PATIENT, "Lindqvist^Astrid", "19670221", "F")
_SPLIT = _Patient(SPLIT_PATIENT, "Okonkwo^Emeka", "19550930", "M")
_COLLIDE_NORTH = _Patient(COLLIDE_ID, "Fischer^Hans", "19480101", "M")
_COLLIDE_EAST = _Patient(COLLIDE_ID, "Tanaka^Yuki", "19920612", "F")
_PAGE = _Patient(PAGE_PATIENT, "Dvořák^Zoë^Marie", "19780415", "F", "ISO_IR 192")
_XREF_NORTH = _Patient(XREF_NORTH, "Haddad^Samir", "19810707", "M")
_XREF_SOUTH = _Patient(XREF_SOUTH, "Haddad^Samir", "19810707", "M")

_SPLIT_A = _Series(1, "CT", "ARTERIAL", "ABDOMEN", 2)
_SPLIT_C = _Series(2, "CT", "PORTAL VENOUS", "ABDOMEN", 3)  # in both copies
_SPLIT_B = _Series(3, "CR", "SCOUT", "ABDOMEN", 1)

# fmt: off
_N = {
    "shared-n1": _Study("shared-n1", _SHARED, "20190312", "101500", "N1001", "CT THORAX", "Welby^Marcus", (
        _Series(1, "CT", "AXIAL 3MM", "CHEST", 3),
    )),
    "shared-n2": _Study("shared-n2", _SHARED, "20210805", "143000", "N1002", "MR LUMBAR SPINE", None, (
        _Series(1, "MR", "T2 SAG", "LSPINE", 2),
        _Series(2, "MR", "T1 AX", "LSPINE", 2),
    )),
    SPLIT_STUDY: _Study(SPLIT_STUDY, _SPLIT, "20220214", "090000", "N2001", "CT ABDOMEN", "Grey^Meredith", (
        _SPLIT_A, _SPLIT_C,
    )),
    "collide-n": _Study("collide-n", _COLLIDE_NORTH, "20200101", "080000", "N3001", "CR CHEST", None, (
        _Series(1, "CR", "PA", "CHEST", 1),
    )),
    "page-n1": _Study("page-n1", _PAGE, "20150310", "110000", "N4001", "CT HEAD", "House^Gregory", (
        _Series(1, "CT", "HEAD ROUTINE", "HEAD", 2),
        _Series(2, "CT", "BONE", "HEAD", 1),
    )),
    "page-n2": _Study("page-n2", _PAGE, "20180722", "093000", "N4002", "MR KNEE", None, (
        _Series(1, "MR", "PD SAG", "KNEE", 2),
    )),
    "page-n3": _Study("page-n3", _PAGE, "20240102", "161500", None, "", None, (  # empty AccessionNumber, Description
        _Series(1, "US", "ABDOMEN", "ABDOMEN", 1),
    )),
    "xref-n": _Study("xref-n", _XREF_NORTH, "20170619", "120000", "N5001", "US THYROID", None, (
        _Series(1, "US", "THYROID", "NECK", 2),
    )),
}
_S = {
    "shared-s1": _Study("shared-s1", _SHARED, "20230115", "100000", "N1003", "CR CHEST", None, (
        _Series(1, "CR", "PA", "CHEST", 1),
        _Series(2, "CR", "LATERAL", "CHEST", 1),
    )),
    SPLIT_STUDY: _Study(SPLIT_STUDY, _SPLIT, "20220214", "090000", "N2001", "CT ABDOMEN", "Grey^Meredith", (
        _SPLIT_C, _SPLIT_B,
    )),
    "page-s1": _Study("page-s1", _PAGE, "20161105", "141500", "S4001", "CR HAND", None, (
        _Series(1, "CR", "HAND PA", "HAND", 1),
    )),
    "page-s2": _Study("page-s2", _PAGE, "20210930", "081500", "S4002", None, "Suzuki^Ichiro", (  # no Description
        _Series(1, "CT", "CHEST", "CHEST", 2),
        _Series(2, "CR", "CHEST PA", "CHEST", 1),
    )),
    "xref-s": _Study("xref-s", _XREF_SOUTH, "20220301", "150000", "S5001", "MR BRAIN", None, (
        _Series(1, "MR", "T1 AX", "BRAIN", 2),
    )),
}
_E = {
    "collide-e": _Study("collide-e", _COLLIDE_EAST, "20230420", "130000", "E3001", "US PELVIS", None, (
        _Series(1, "US", "PELVIS", "PELVIS", 2),
    )),
    "page-e1": _Study("page-e1", _PAGE, "20190214", "100500", "E4001", "MR BRAIN", None, (
        _Series(1, "MR", "T2 AX", "BRAIN", 3),
        _Series(2, "MR", "FLAIR", "BRAIN", 1),
    )),
    "page-e2": _Study("page-e2", _PAGE, "20230611", "094500", "E4002", "US LIVER + CR", None, (
        _Series(1, "US", "LIVER", "ABDOMEN", 2),
        _Series(2, "CR", "ABDOMEN", "ABDOMEN", 1),
    )),
}
# fmt: on

# Study key -> stored IssuerOfPatientID, per source; absent: none stored.
_EXPLICIT: Mapping[str, Mapping[str, str]] = {
    "north": {},
    "south": {"shared-s1": "NORTH", SPLIT_STUDY: "NORTH", "page-s1": "NORTH", "page-s2": "NORTH"},
    "east": {"page-e1": "NORTH", "page-e2": "NORTH"},
}
_SPECS: Mapping[str, Mapping[str, _Study]] = {"north": _N, "south": _S, "east": _E}


def _truth(spec: _Study, issuer: str | None, seed: int) -> StudyTruth:
    series = []
    for s in spec.series:
        sop_class = SOP_CLASS_BY_MODALITY[s.modality]
        instances = [
            InstanceTruth(make_uid(seed, "fed", "instance", spec.key, s.number, i), sop_class, i)
            for i in range(1, s.n_instances + 1)
        ]
        series.append(
            SeriesTruth(
                uid=make_uid(seed, "fed", "series", spec.key, s.number),
                number=s.number,
                modality=s.modality,
                description=s.description,
                body_part=s.body_part,
                laterality=None,
                series_date=None,
                series_time=None,
                instances=instances,
            )
        )
    p = spec.patient
    return StudyTruth(
        study_uid=make_uid(seed, "fed", "study", spec.key),
        patient_id=p.patient_id,
        issuer=issuer,
        patient_name=p.name,
        birth_date=p.birth_date,
        sex=p.sex,
        study_date=spec.date,
        study_time=spec.time,
        tz_offset=None,
        accession=spec.accession,
        study_id=spec.key[:16],
        description=spec.description,
        referrer=spec.referrer,
        series=series,
        charset=p.charset,
    )


def build_federation_data(*, seed: int = 11) -> tuple[dict[str, list[Dataset]], FederationManifest]:
    """Per-source DICOM instances ({"north": [...], "south": [...], "east": [...]}) and their manifest."""
    sources = []
    keys: dict[str, str] = {}
    for name, issuer in SOURCES:
        explicit = _EXPLICIT[name]
        studies = tuple(_truth(spec, explicit.get(key), seed) for key, spec in _SPECS[name].items())
        keys |= {key: st.study_uid for key, st in zip(_SPECS[name], studies, strict=True)}
        sources.append(SourceTruth(name, issuer, studies))
    persons = (
        ((SYSTEMS["NORTH"], XREF_NORTH), (SYSTEMS["SOUTH"], XREF_SOUTH), (NATIONAL_SYSTEM, "NAT-555-0100")),
        # MRN-COLLIDE: two people, each known in one domain only (a PIX query answers no other identifier).
        ((SYSTEMS["NORTH"], COLLIDE_ID),),
        ((SYSTEMS["EAST"], COLLIDE_ID),),
        ((SYSTEMS["NORTH"], SHARED_PATIENT), (NATIONAL_SYSTEM, "NAT-555-0200")),
    )
    manifest = FederationManifest(tuple(sources), keys, persons)
    datasets = {src.name: [ds for st in src.studies for ds in render_study(st)] for src in manifest.sources}
    return datasets, manifest


# -- running it ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FederationSource:
    """One running archive."""

    name: str
    issuer: str
    server: OrthancServer
    datasets: list[Dataset] = field(repr=False)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def dicomweb_url(self) -> str:
        return self.server.dicomweb_url


@dataclass(frozen=True)
class Federation:
    """Three private Orthancs loaded with :func:`build_federation_data` (what the ``federation`` fixture yields)."""

    sources: tuple[FederationSource, ...]
    manifest: FederationManifest
    load_seconds: float

    def source(self, name: str) -> FederationSource:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def settings(self, urls: Mapping[str, str] | None = None) -> list[dict[str, str]]:
        """``[[sources]]`` entries for the facade (``FACADE_SOURCES`` as JSON); ``urls`` replaces some sources'
        DICOMweb roots, e.g. with a fault proxy's."""
        urls = urls or {}
        return [
            {"name": s.name, "dicomweb_url": urls.get(s.name, s.dicomweb_url), "issuer": s.issuer} for s in self.sources
        ]


def _stop_all(servers: Sequence[OrthancServer]) -> None:
    """Stop the servers (each by its PID) in parallel: Orthanc takes about 2 s to exit on SIGTERM."""
    with ThreadPoolExecutor(max_workers=len(servers) or 1) as pool:
        list(pool.map(OrthancServer.stop, servers))


@contextmanager
def start_federation(*, seed: int = 11, names: Sequence[str] | None = None) -> Iterator[Federation]:
    """Start one Orthanc per source (in parallel), store its data, yield; stop them all (by PID) on exit.

    ``names`` limits which sources are started (the manifest still describes all three)."""
    started = time.perf_counter()
    datasets, manifest = build_federation_data(seed=seed)
    wanted = [s for s in manifest.sources if names is None or s.name in names]
    with ExitStack() as stack:
        servers = [OrthancServer() for _ in wanted]
        stack.callback(_stop_all, servers)
        with ThreadPoolExecutor(max_workers=len(servers) or 1) as pool:
            list(pool.map(OrthancServer.start, servers))
            list(pool.map(lambda s, t: store(s.dicomweb_url, datasets[t.name]), servers, wanted))
        sources = tuple(
            FederationSource(t.name, t.issuer, server, datasets[t.name])
            for t, server in zip(wanted, servers, strict=True)
        )
        yield Federation(sources, manifest, time.perf_counter() - started)
