"""Paging to the last page loses nothing, for every search parameter the CapabilityStatements list.

A study silently missing from an answer is the worst bug this product can have, and it hides in paging: Debian's
Orthanc 1.10 applies ``offset`` wrongly whenever ``ModalitiesInStudy`` is a study-level filter (a page holds
max(0, limit - offset) rows, shared/docs/orthanc-qido.md TL;DR 3), so ``modality=KO`` followed through its
``next`` links once returned 11 of 31 studies. Nothing but a real PACS shows such a quirk, so this module asks a
private Orthanc, loaded with the generator's curated data set plus key-image manifests (KOS) in 8 of its studies,
for every parameter of every resource type the CapabilityStatements of /fhir/R4 and /fhir/R5 list (read at test
time, so a new parameter cannot escape), with a value that matches at least 3 resources, and checks that:

- ``_count=2`` followed through ``next`` to the last page gives every match exactly once;
- that union equals the unpaged answer (``_count=100``), resource for resource;
- both equal the ground truth computed from the generator's manifest (not from the facade).

A listed parameter without a case in :func:`cases` fails the test; one that truly cannot be tested goes into
:data:`EXEMPT` with the reason.
"""

from __future__ import annotations

import dataclasses
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom import Dataset
from starlette.testclient import TestClient

from app.dicom.terminology import BODY_PARTS, body_parts_for_snomed
from app.fhir import patient_ids, selection_ids
from app.main import create_app
from app.mapping.document_reference import fhir_document_id, kos_document_id
from app.settings import Settings
from tests.support.dataset import InstanceTruth, Manifest, SeriesTruth, StudyTruth, build_dataset, make_uid
from tests.support.kos import (
    FOR_CONFERENCE,
    FOR_REFERRING_PROVIDER,
    FOR_TEACHING,
    KOS_SOP_CLASS_UID,
    QUALITY_ISSUE,
    Title,
    make_kos,
)
from tests.support.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, store

pytestmark = pytest.mark.integration
SEED = 7  # build_dataset's default seed: study UIDs are make_uid(SEED, "study", key)
PAGE = 2  # _count of the paged walk
UNPAGED = 100  # _count of the one-page answer (the default max_count)
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# (resource type, parameter name) → why it has no paging case. Keep this small: every entry is a criterion whose
# deep pages nobody checks against a real PACS.
EXEMPT: dict[tuple[str, str], str] = {}

# The KOS stored on top of the curated data set: (study key, index of the selected series, title, ContentDate).
# 8 studies hold a KO series (doe-cr two), so modality=KO pages 4 times at _count=2; the dates leave gaps so no
# issued= boundary falls on a document's day.
KOS_PLAN: tuple[tuple[str, int, Title, str], ...] = (
    ("mueller-ct", 0, FOR_TEACHING, "20240301"),
    ("mueller-mr", 1, FOR_TEACHING, "20240303"),
    ("yamada-us", 0, FOR_CONFERENCE, "20240305"),
    ("gomez-cr", 0, FOR_TEACHING, "20240307"),
    ("smith-mr-knee", 0, FOR_REFERRING_PROVIDER, "20240309"),
    ("brown-ct-head", 0, FOR_TEACHING, "20240311"),
    ("doe-cr", 0, FOR_CONFERENCE, "20240313"),
    ("doe-cr", 0, FOR_REFERRING_PROVIDER, "20240315"),
    ("davis-ct", 0, QUALITY_ISSUE, "20240317"),
)


@dataclass(frozen=True)
class KosTruth:
    uid: str  # SOP Instance UID: the ImagingSelection is selection_ids.encode(uid, 0) (one series selected)
    study: StudyTruth  # the study it is stored in and selects from (before the KO series was added)
    series: SeriesTruth  # the selected series
    title: str  # CID 7010 code
    content_date: str

    @property
    def id(self) -> str:
        return selection_ids.encode(self.uid, 0)


@dataclass(frozen=True)
class World:
    server: OrthancServer
    manifest: Manifest  # the curated studies, each KO series added to the study that holds it
    kos: tuple[KosTruth, ...]

    def study(self, key: str) -> StudyTruth:
        return self.manifest.study(make_uid(SEED, "study", key))


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    if orthanc_binary() is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    datasets, manifest = build_dataset(seed=SEED)
    by_series: dict[str, list[Dataset]] = {}
    for ds in datasets:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    documents: list[Dataset] = []
    truths: list[KosTruth] = []
    ko_series: dict[str, list[SeriesTruth]] = {}
    for n, (key, index, title, day) in enumerate(KOS_PLAN):
        study = manifest.study(make_uid(SEED, "study", key))
        series = study.series[index]
        doc = make_kos(by_series[series.uid], title=title, seed=100 + n, content_date=day)
        documents.append(doc)
        truths.append(KosTruth(str(doc.SOPInstanceUID), study, series, title[0], day))
        ko = SeriesTruth(
            str(doc.SeriesInstanceUID), 999, "KO", None, None, None, None, None,
            [InstanceTruth(str(doc.SOPInstanceUID), KOS_SOP_CLASS_UID, 1)],
        )  # fmt: skip
        ko_series.setdefault(study.study_uid, []).append(ko)
    augmented = Manifest(
        [dataclasses.replace(s, series=[*s.series, *ko_series.get(s.study_uid, [])]) for s in manifest.studies]
    )
    with OrthancServer() as server:
        store(server.dicomweb_url, [*datasets, *documents])
        yield World(server, augmented, tuple(truths))


@pytest.fixture(scope="module")
def facade(world: World) -> Iterator[TestClient]:
    # unchecked: validating each of the ~350 Bundles (tests.support.fhir_check) would triple the run time,
    # and their shape is checked by test_facade_orthanc and test_manifests_orthanc; here membership is the point.
    with TestClient(create_app(Settings(auth_mode="open", dicomweb_url=world.server.dicomweb_url))) as client:
        yield client


# -- ground truth, from the manifest only ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    resource: str
    param: str  # the CapabilityStatement's searchParam.name this case covers
    query: str  # the search, without _count
    expected: frozenset[str]  # resource ids, from the manifest


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def _name_parts(name: str, which: str) -> list[str]:
    """The parts of a stored PN (all groups) that a name / family / given search looks at."""
    parts = []
    for group in name.split("="):
        components = group.split("^")
        if which == "family":
            parts += components[:1]
        elif which == "given":
            parts += [p for c in components[1:3] for p in c.split()]
        else:
            parts += [p for c in components for p in c.split()]
    return [p for p in parts if p]


def cases(w: World) -> list[Case]:
    studies = w.manifest.studies
    key = w.study

    def study_ids(pred: Callable[[StudyTruth], bool]) -> frozenset[str]:
        return frozenset(s.study_uid for s in studies if pred(s))

    def patient_ids_of(pred: Callable[[StudyTruth], bool]) -> frozenset[str]:
        return frozenset(patient_ids.encode(s.patient_id, s.issuer) for s in studies if pred(s))

    def pid(study_key: str) -> str:
        s = key(study_key)
        return patient_ids.encode(s.patient_id, s.issuer)

    def refs(*study_keys: str) -> str:
        return ",".join(f"Patient/{pid(k)}" for k in study_keys)

    def patients_of(*study_keys: str) -> set[tuple[str, str | None]]:
        return {(key(k).patient_id, key(k).issuer) for k in study_keys}

    def uids(*study_keys: str) -> set[str]:
        return {key(k).study_uid for k in study_keys}

    def selections(pred: Callable[[KosTruth], bool]) -> frozenset[str]:
        return frozenset(k.id for k in w.kos if pred(k))

    def named(which: str, values: list[str]) -> Callable[[StudyTruth], bool]:
        return lambda s: any(_fold(p).startswith(_fold(v)) for p in _name_parts(s.patient_name, which) for v in values)

    def has_part(pred: Callable[[str | None], bool]) -> Callable[[StudyTruth], bool]:
        return lambda s: any(pred(se.body_part) for se in s.series)

    chest_code = BODY_PARTS["CHEST"][0]
    chest_terms = set(body_parts_for_snomed(chest_code))
    some = [studies[i] for i in (0, 2, 4, 6, 8)]
    some_uids = {s.study_uid for s in some}
    series_pick = [key(k).series[0] for k in ("mueller-mr", "gomez-cr", "brown-ct-head")]
    instance_pick = [key(k).series[-1].instances[0] for k in ("mueller-ct", "yamada-ct-us", "smith-cr-knee", "doe-us")]
    accessions = ["ACC1001", "ACC2001", "ACC3001", "ACC4001"]  # not acc2001: accession search is case-sensitive
    uid_tokens = ",".join(f"urn:dicom:uid|urn:oid:{u}" for u in sorted(some_uids))
    in_2020s = study_ids(lambda s: (s.study_date or "") >= "20200101")
    ko_studies = study_ids(lambda s: "KO" in s.modalities)
    everything = study_ids(lambda s: True)
    kos_uids = [k.uid for k in w.kos[2:6]]
    selected_by_study = ("mueller-ct", "doe-cr", "davis-ct")
    derived_from = ("gomez-cr", "doe-cr", "brown-ct-head")

    out = [
        # ImagingStudy (R4 and R5; R5 renames bodysite to body-site, below)
        Case("ImagingStudy", "_id", "_id=" + ",".join(sorted(some_uids)), frozenset(some_uids)),
        Case(
            "ImagingStudy",
            "identifier",
            "identifier=" + ",".join(accessions),
            study_ids(lambda s: s.accession in accessions),
        ),
        Case("ImagingStudy", "identifier", "identifier=" + uid_tokens, frozenset(some_uids)),
        Case(
            "ImagingStudy",
            "patient",
            "patient=" + refs("mueller-ct", "yamada-us"),
            study_ids(lambda s: (s.patient_id, s.issuer) in patients_of("mueller-ct", "yamada-us")),
        ),
        Case(
            "ImagingStudy",
            "patient",
            "patient.identifier=MRN0001,JP0002,ES0003",
            study_ids(lambda s: s.patient_id in ("MRN0001", "JP0002", "ES0003")),
        ),
        Case(
            "ImagingStudy",
            "subject",
            "subject=" + refs("gomez-cr", "smith-cr-knee"),
            study_ids(lambda s: (s.patient_id, s.issuer) in patients_of("gomez-cr", "smith-cr-knee")),
        ),
        Case("ImagingStudy", "started", "started=ge2020-01-01", in_2020s),
        Case("ImagingStudy", "started", "started=ge1900", everything),  # many matches: every study, 7 pages
        Case("ImagingStudy", "started", "started:missing=false", study_ids(lambda s: s.study_date is not None)),
        # The cases the Orthanc offset quirk broke: a study-level ModalitiesInStudy filter.
        Case("ImagingStudy", "modality", "modality=KO", ko_studies),
        Case("ImagingStudy", "modality", "modality=CT", study_ids(lambda s: "CT" in s.modalities)),
        Case(
            "ImagingStudy",
            "modality",
            f"modality={DCM}|CT,MR",
            study_ids(lambda s: bool({"CT", "MR"} & set(s.modalities))),
        ),
        Case("ImagingStudy", "modality", "modality:not=KO", everything - ko_studies),
        Case("ImagingStudy", "modality", "modality=KO&started=ge2020-01-01", ko_studies & in_2020s),
        Case(
            "ImagingStudy",
            "series",
            "series=" + ",".join(s.uid for s in series_pick),
            study_ids(lambda s: any(se in s.series for se in series_pick)),
        ),
        Case(
            "ImagingStudy",
            "instance",
            "instance=" + ",".join(i.uid for i in instance_pick),
            study_ids(lambda s: any(i in s.instances for i in instance_pick)),
        ),
        Case(
            "ImagingStudy",
            "dicom-class",
            f"dicom-class={CT_IMAGE_STORAGE}",
            study_ids(lambda s: any(i.sop_class_uid == CT_IMAGE_STORAGE for i in s.instances)),
        ),
        Case("ImagingStudy", "dicom-class", f"dicom-class=urn:oid:{KOS_SOP_CLASS_UID}", ko_studies),
        Case(
            "ImagingStudy",
            "referrer",
            "referrer.name=Welby,Grey",
            study_ids(lambda s: (s.referrer or "").split("^")[0] in ("Welby", "Grey")),
        ),
        Case("ImagingStudy", "referrer", "referrer:missing=true", study_ids(lambda s: not s.referrer)),
        Case("ImagingStudy", "endpoint", "endpoint=Endpoint/wado-rs", everything),
        Case("ImagingStudy", "status", "status=available", everything),
        Case("ImagingStudy", "status", "status:not=cancelled", everything),
        # Patient (R4 and R5): the distinct PatientID + issuer pairs of the matching studies
        Case(
            "Patient",
            "_id",
            "_id=" + ",".join(pid(k) for k in ("mueller-ct", "smith-mr-knee", "brown-ct-head")),
            patient_ids_of(lambda s: s.patient_id in ("MRN0001", "SHARED01")),
        ),
        Case(
            "Patient",
            "identifier",
            "identifier=MRN0001,JP0002,SHARED01",
            patient_ids_of(lambda s: s.patient_id in ("MRN0001", "JP0002", "SHARED01")),
        ),
        Case("Patient", "name", "name=smith,BROWN,Doe", patient_ids_of(named("name", ["smith", "BROWN", "Doe"]))),
        Case(
            "Patient",
            "family",
            "family=Smith,Brown,Davis",
            patient_ids_of(named("family", ["Smith", "Brown", "Davis"])),
        ),
        Case("Patient", "given", "given=John,Alice,Jane", patient_ids_of(named("given", ["John", "Alice", "Jane"]))),
        Case(
            "Patient",
            "birthdate",
            "birthdate=ge1970-01-01",
            patient_ids_of(lambda s: (s.birth_date or "") >= "19700101"),
        ),
        Case("Patient", "gender", "gender=female", patient_ids_of(lambda s: s.sex == "F")),
        Case("Patient", "gender", "gender:not=male", patient_ids_of(lambda s: s.sex != "M")),
        # ImagingSelection (R5): one selection per KOS here (each selects one series)
        Case(
            "ImagingSelection", "_id", "_id=" + ",".join(k.id for k in w.kos[:4]), selections(lambda k: k in w.kos[:4])
        ),
        Case(
            "ImagingSelection",
            "identifier",
            "identifier=" + ",".join(f"urn:oid:{u}" for u in kos_uids),
            selections(lambda k: k.uid in kos_uids),
        ),
        Case(
            "ImagingSelection",
            "patient",
            "patient=" + refs("mueller-ct", "doe-cr"),
            selections(lambda k: (k.study.patient_id, k.study.issuer) in patients_of("mueller-ct", "doe-cr")),
        ),
        Case(
            "ImagingSelection",
            "subject",
            "subject=" + refs("yamada-us", "gomez-cr", "smith-mr-knee"),
            selections(
                lambda k: (k.study.patient_id, k.study.issuer) in patients_of("yamada-us", "gomez-cr", "smith-mr-knee")
            ),
        ),
        Case("ImagingSelection", "code", f"code={DCM}|{FOR_TEACHING[0]}", selections(lambda k: k.title == "113004")),
        Case("ImagingSelection", "code", "code=113005,113002", selections(lambda k: k.title in ("113005", "113002"))),
        Case(
            "ImagingSelection",
            "study-uid",
            "study-uid=" + ",".join(sorted(uids(*selected_by_study))),
            selections(lambda k: k.study.study_uid in uids(*selected_by_study)),
        ),
        Case(
            "ImagingSelection",
            "derived-from",
            "derived-from=" + ",".join(f"ImagingStudy/{u}" for u in sorted(uids(*derived_from))),
            selections(lambda k: k.study.study_uid in uids(*derived_from)),
        ),
        Case("ImagingSelection", "issued", "issued=ge2024-03-08", selections(lambda k: k.content_date >= "20240308")),
        Case("ImagingSelection", "body-site", "body-site=CHEST", selections(lambda k: k.series.body_part == "CHEST")),
    ]

    # DocumentReference (R4, IHE MADO): two per KOS, its DICOM form (id = KOS UID) and its FHIR form
    def documents(pred: Callable[[KosTruth], bool], forms: tuple[str, ...] = ("kos", "fhir")) -> frozenset[str]:
        ids = {"kos": kos_document_id, "fhir": fhir_document_id}
        return frozenset(ids[f](k.uid) for k in w.kos if pred(k) for f in forms)

    accession_of = ("mueller-ct", "doe-cr", "davis-ct")
    accession_values = sorted(a for k in accession_of if (a := key(k).accession))
    out += [
        Case(
            "DocumentReference",
            "_id",
            "_id=" + ",".join(kos_document_id(k.uid) for k in w.kos[:4]),
            documents(lambda k: k in w.kos[:4], ("kos",)),
        ),
        Case(
            "DocumentReference",
            "identifier",
            "identifier=" + ",".join(f"urn:oid:{u}" for u in kos_uids),
            documents(lambda k: k.uid in kos_uids),
        ),
        Case(
            "DocumentReference",
            "patient",
            "patient=" + refs("mueller-ct", "doe-cr"),
            documents(lambda k: (k.study.patient_id, k.study.issuer) in patients_of("mueller-ct", "doe-cr")),
        ),
        Case(
            "DocumentReference",
            "subject",
            "subject=" + refs("yamada-us", "gomez-cr", "smith-mr-knee"),
            documents(
                lambda k: (k.study.patient_id, k.study.issuer) in patients_of("yamada-us", "gomez-cr", "smith-mr-knee")
            ),
        ),
        Case("DocumentReference", "status", "status=current", documents(lambda k: True)),
        Case("DocumentReference", "type", "type=http://loinc.org|18748-4", documents(lambda k: True)),
        Case("DocumentReference", "category", "category=18748-4", documents(lambda k: True)),
        Case(
            "DocumentReference",
            "format",
            "format=urn:ihe:rad:MADO:fhir-manifest:2026",
            documents(lambda k: True, ("fhir",)),
        ),
        Case(
            "DocumentReference",
            "format",
            "format=http://dicom.nema.org/resources/ontology/DCMUID|1.2.840.10008.5.1.4.1.1.88.59",
            documents(lambda k: True, ("kos",)),
        ),
        Case("DocumentReference", "date", "date=ge2024-03-08", documents(lambda k: k.content_date >= "20240308")),
        Case(
            "DocumentReference",
            "study-instance-uid",
            "study-instance-uid=" + ",".join(sorted(uids(*selected_by_study))),
            documents(lambda k: k.study.study_uid in uids(*selected_by_study)),
        ),
        Case(
            "DocumentReference",
            "accession-number",
            "accession-number=" + ",".join(accession_values),
            documents(lambda k: k.study.accession in accession_values),
        ),
        Case("DocumentReference", "modality", "modality=CT", documents(lambda k: k.series.modality == "CT")),
        Case("DocumentReference", "bodysite", "bodysite=CHEST", documents(lambda k: k.series.body_part == "CHEST")),
        Case(
            "DocumentReference",
            "related",
            "related=" + ",".join(f"ImagingStudy/{u}" for u in sorted(uids(*derived_from))),
            documents(lambda k: k.study.study_uid in uids(*derived_from)),
        ),
    ]
    for name in ("bodysite", "body-site"):  # R4's name and R5's for the same ImagingStudy parameter
        out += [
            Case("ImagingStudy", name, f"{name}={SCT}|{chest_code}", study_ids(has_part(lambda b: b in chest_terms))),
            Case("ImagingStudy", name, f"{name}=KNEE", study_ids(has_part(lambda b: b == "KNEE"))),
        ]
    return out


# -- walking the pages -------------------------------------------------------------------------------------------


def _get(client: TestClient, url: str) -> dict[str, Any]:
    r = client.get(url)
    assert r.status_code == 200, f"{url}: {r.status_code} {r.text[:300]}"
    body: dict[str, Any] = r.json()
    return body


def _matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def walk(client: TestClient, url: str) -> tuple[list[dict[str, Any]], int]:
    """Every match found by following ``next`` from ``url`` to the last page, in order; and the page count."""
    found: list[dict[str, Any]] = []
    for pages in range(1, 200):
        body = _get(client, url)
        page = _matches(body)
        assert len(page) <= PAGE, f"{url}: {len(page)} matches on a page of {PAGE}"
        found += page
        nxt = [link["url"] for link in body["link"] if link["relation"] == "next"]
        if not nxt:
            return found, pages
        url = nxt[0]
    raise AssertionError(f"paging from {url} did not end")


def check_case(client: TestClient, version: str, case: Case) -> str | None:
    """None when paged, unpaged and truth agree; else what differs."""
    where = f"/fhir/{version}/{case.resource}?{case.query}"
    if len(case.expected) < 3:
        return f"{where}: the case matches {len(case.expected)} resources in the manifest; choose a value matching ≥3"
    paged, pages = walk(client, f"{where}&_count={PAGE}")
    ids = [r["id"] for r in paged]
    unpaged_body = _get(client, f"{where}&_count={UNPAGED}")
    unpaged = {r["id"]: r for r in _matches(unpaged_body)}
    problems = []
    if len(ids) != len(set(ids)):
        problems.append(f"duplicates across pages: {sorted({i for i in ids if ids.count(i) > 1})}")
    if set(ids) != case.expected:
        missing, extra = case.expected - set(ids), set(ids) - case.expected
        problems.append(f"paged ({pages} pages) has {len(set(ids))} of {len(case.expected)}: missing {sorted(missing)}"
                        f", unexpected {sorted(extra)}")  # fmt: skip
    if set(unpaged) != case.expected:
        problems.append(f"unpaged has {len(unpaged)} of {len(case.expected)}")
    if any(link["relation"] == "next" for link in unpaged_body["link"]):
        problems.append("the unpaged answer has a next link")
    if pages < 2:
        problems.append(f"{len(case.expected)} matches at _count={PAGE} came on {pages} page")
    differing = [r["id"] for r in paged if r["id"] in unpaged and r != unpaged[r["id"]]]
    if differing:
        problems.append(f"resources differ between the paged and the unpaged answer: {differing[:3]}")
    return f"{where}: " + "; ".join(problems) if problems else None


def listed_parameters(client: TestClient, version: str) -> dict[str, list[str]]:
    """resource type → searchParam names, from the CapabilityStatement the server gives now."""
    cs = _get(client, f"/fhir/{version}/metadata")
    return {r["type"]: [p["name"] for p in r.get("searchParam", [])] for r in cs["rest"][0]["resource"]}


# -- the tests ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_every_listed_parameter_pages_to_the_end_without_loss(facade, world, version):
    table: dict[tuple[str, str], list[Case]] = {}
    for case in cases(world):
        table.setdefault((case.resource, case.param), []).append(case)
    listed = listed_parameters(facade, version)
    uncovered = [
        (rtype, name)
        for rtype, names in listed.items()
        for name in names
        if (rtype, name) not in table and (rtype, name) not in EXEMPT
    ]
    assert not uncovered, (
        f"{version} CapabilityStatement lists search parameters without a paging case: {uncovered}; "
        "add a case to cases() in tests/integration/test_paging_exhaustive.py (or, with a reason, to EXEMPT)"
    )
    started = time.perf_counter()
    failures = [
        problem
        for rtype, names in listed.items()
        for name in names
        for case in table.get((rtype, name), [])
        if (problem := check_case(facade, version, case)) is not None
    ]
    elapsed = time.perf_counter() - started
    assert not failures, f"{len(failures)} searches lose or invent matches when paged:\n" + "\n".join(failures)
    print(f"{version}: {sum(len(n) for n in listed.values())} parameters checked in {elapsed:.1f} s")


def test_every_case_names_a_listed_parameter(facade, world):
    """A case under a misspelt or retired name would silently test nothing."""
    listed = {(rtype, name) for v in ("R4", "R5") for rtype, names in listed_parameters(facade, v).items()
              for name in names}  # fmt: skip
    assert {(c.resource, c.param) for c in cases(world)} <= listed
    assert set(EXEMPT) <= listed


@pytest.mark.parametrize("modality", ["KO", "CT"])
@pytest.mark.parametrize("version", ["R4", "R5"])
def test_a_global_modality_search_pages_to_the_end(facade, world, version, modality):
    """The issue's case: a study-level ModalitiesInStudy filter with offset (Orthanc 1.10 quirk)."""
    want = frozenset(s.study_uid for s in world.manifest.studies if modality in s.modalities)
    assert len(want) >= 5  # at least 3 pages at _count=2
    problem = check_case(facade, version, Case("ImagingStudy", "modality", f"modality={modality}", want))
    assert problem is None, problem


def test_every_study_by_a_started_range(facade, world):
    want = frozenset(s.study_uid for s in world.manifest.studies)
    problem = check_case(facade, "R4", Case("ImagingStudy", "started", "started=ge1900-01-01", want))
    assert problem is None, problem


def test_instance_paging_gives_every_instance(world):
    """instances_of pages instance rows with QIDO offset (StudyInstanceUID list, instance level): with 2 rows per
    request every study is read over several pages, and must still carry each of its instances once."""
    settings = Settings(auth_mode="open", dicomweb_url=world.server.dicomweb_url, instance_limit=2, cache_ttl=0)
    # unchecked: membership of instances is the point; shapes are checked elsewhere
    with TestClient(create_app(settings)) as client:
        for study in world.manifest.studies:
            body = _get(client, f"/fhir/R4/ImagingStudy/{study.study_uid}")
            got = [i["uid"] for se in body["series"] for i in se["instance"]]
            assert sorted(got) == sorted(i.uid for i in study.instances), study.study_uid
