"""SMART scopes v1/v2 (app.security.scopes): what each scope grants, which levels grant it, restricted and odd scopes.

Property tests (hypothesis) are derandomized with no example database, as in test_properties.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.security.scopes import ALL, LETTER, Scope, Scopes, parse_scope

PROFILE = settings(max_examples=300, derandomize=True, database=None, deadline=None)
INTERACTIONS = ("create", "read", "update", "delete", "search")
TYPES = ("ImagingStudy", "Patient", "Endpoint", "Observation")


class TestParse:
    @pytest.mark.parametrize(
        ("text", "scope"),
        [
            ("patient/ImagingStudy.read", Scope("patient", "ImagingStudy", "rs")),
            ("patient/ImagingStudy.rs", Scope("patient", "ImagingStudy", "rs")),
            ("user/*.read", Scope("user", "*", "rs")),
            ("system/*.*", Scope("system", "*", "cruds")),
            ("patient/*.write", Scope("patient", "*", "cud")),
            ("user/Patient.cruds", Scope("user", "Patient", "cruds")),
            ("system/ImagingStudy.s", Scope("system", "ImagingStudy", "s")),
            ("patient/Observation.cu", Scope("patient", "Observation", "cu")),
        ],
    )
    def test_v1_and_v2(self, text, scope):
        assert parse_scope(text) == scope
        assert parse_scope(text).raw == text

    def test_query_restriction_is_parsed(self):
        s = parse_scope(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|lab"
        )
        assert s is not None and s.restricted
        assert s.query == (("category", "http://terminology.hl7.org/CodeSystem/observation-category|lab"),)
        two = parse_scope("patient/ImagingStudy.rs?modality=CT&_security=R")
        assert two is not None and two.query == (("modality", "CT"), ("_security", "R"))

    @pytest.mark.parametrize(
        "text",
        [
            "openid",
            "fhirUser",
            "profile",
            "launch",
            "launch/patient",
            "offline_access",
            "online_access",
            "patient/ImagingStudy.sr",  # out of order: SMART says MAY be ignored; ignoring never over-grants
            "patient/ImagingStudy.dus",
            "patient/ImagingStudy.rr",
            "patient/ImagingStudy.x",
            "patient/ImagingStudy.",
            "patient/ImagingStudy.RS",
            "patient/imagingStudy.rs",  # resource types are case-sensitive
            "Patient/ImagingStudy.rs",
            "group/ImagingStudy.rs",
            "patient/ImagingStudy",
            "patient/*.read?modality=CT",  # restrictions are v2 only
            "patient/ImagingStudy.rs?",
            "patient/ImagingStudy.rs?modality",
            "patient/ImagingStudy.rs?modality=",
            "patient/ImagingStudy.rs?=CT",
            "patient/ImagingStudy.rs?modality=CT&",
            'patient/ImagingStudy.rs?x="y"',
            "patient/ImagingStudy.rs?x=é",
        ],
    )
    def test_not_clinical_scopes(self, text):
        assert parse_scope(text) is None
        scopes = Scopes.parse(text)
        assert scopes.clinical == () and scopes.other == (text,)
        assert not any(scopes.allows(t, i) for t in TYPES for i in INTERACTIONS)

    def test_string_list_and_none(self):
        text = "openid fhirUser launch/patient patient/ImagingStudy.rs offline_access"
        assert Scopes.parse(text) == Scopes.parse(text.split()) == Scopes.parse(["openid fhirUser", *text.split()[2:]])
        assert Scopes.parse(None) == Scopes.parse("") == Scopes.parse("   ") == Scopes()
        assert Scopes.parse(text).other == ("openid", "fhirUser", "launch/patient", "offline_access")
        assert str(Scopes.parse(text)) == "patient/ImagingStudy.rs openid fhirUser launch/patient offline_access"

    def test_duplicates_and_extra_whitespace(self):
        assert Scopes.parse("  user/*.read\tuser/*.read\n") == Scopes.parse("user/*.read")


class TestGrants:
    def test_read_search_create(self):
        s = Scopes.parse("patient/ImagingStudy.read patient/ImagingSelection.c")
        assert s.allows("ImagingStudy", "read") and s.allows("ImagingStudy", "search")
        assert not s.allows("ImagingStudy", "create")
        assert s.allows("ImagingSelection", "create") and not s.allows("ImagingSelection", "read")
        assert not s.allows("Patient", "read")

    def test_v2_letters_are_separate(self):
        r = Scopes.parse("patient/ImagingStudy.r")
        assert r.allows("ImagingStudy", "read") and not r.allows("ImagingStudy", "search")
        s = Scopes.parse("patient/ImagingStudy.s")
        assert s.allows("ImagingStudy", "search") and not s.allows("ImagingStudy", "read")

    def test_write_grants_create_not_read(self):
        w = Scopes.parse("user/*.write")
        assert w.allows("ImagingSelection", "create") and w.allows("Patient", "delete")
        assert not w.allows("ImagingStudy", "read") and not w.allows("ImagingStudy", "search")

    def test_wildcards(self):
        assert all(ALL.allows(t, i) for t in TYPES for i in INTERACTIONS)
        assert Scopes.parse("system/*.*").grants == ALL.grants
        star = Scopes.parse("patient/*.rs")
        assert star.allows("AnythingAtAll", "search") and not star.allows("ImagingStudy", "create")

    def test_context_levels(self):
        s = Scopes.parse("patient/ImagingStudy.rs user/*.r system/Patient.s")
        assert s.context("ImagingStudy", "search") == {"patient"}
        assert s.context("ImagingStudy", "read") == {"patient", "user"}
        assert s.context("Patient", "search") == {"system"}
        assert s.context("Patient", "read") == {"user"}
        assert s.context("Patient", "create") == frozenset()

    def test_restricted_scope_grants_nothing(self):
        s = Scopes.parse("patient/ImagingStudy.rs?modality=CT")
        assert not s.allows("ImagingStudy", "search") and s.context("ImagingStudy", "search") == frozenset()
        assert [x.raw for x in s.restricted("ImagingStudy", "search")] == ["patient/ImagingStudy.rs?modality=CT"]
        assert s.restricted("ImagingStudy", "create") == ()
        assert s.grants == frozenset()

    def test_unrestricted_scope_beside_a_restricted_one_still_grants(self):
        s = Scopes.parse("patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs")
        assert s.allows("ImagingStudy", "search")
        assert s.grants == Scopes.parse("patient/ImagingStudy.rs").grants

    def test_grants_are_canonical(self):
        assert Scopes.parse("patient/ImagingStudy.read").grants == {
            "patient/ImagingStudy.r",
            "patient/ImagingStudy.s",
        }
        assert Scopes.parse("openid fhirUser launch").grants == frozenset()


# ------------------------------------------------------------------------------------------------ properties

levels = st.sampled_from(["patient", "user", "system"])
resources = st.one_of(st.just("*"), st.sampled_from(TYPES), st.from_regex(r"[A-Z][A-Za-z]{0,20}", fullmatch=True))
letters = st.lists(st.sampled_from("cruds"), unique=True).map(lambda ls: "".join(c for c in "cruds" if c in ls))
v2_scopes = st.builds(lambda lv, rt, p: f"{lv}/{rt}.{p}", levels, resources, letters.filter(bool))
extra = st.sampled_from(["openid", "fhirUser", "launch", "launch/patient", "offline_access", "user/Odd.sr"])


def _equivalent(a: Scopes, b: Scopes) -> bool:
    return all(a.context(t, i) == b.context(t, i) for t in (*TYPES, "Zzz") for i in INTERACTIONS)


@PROFILE
@given(levels, resources)
def test_v1_words_equal_their_v2_letters(level, resource):
    for v1, v2 in (("read", "rs"), ("write", "cud"), ("*", "cruds")):
        a, b = Scopes.parse(f"{level}/{resource}.{v1}"), Scopes.parse(f"{level}/{resource}.{v2}")
        assert a.grants == b.grants
        assert _equivalent(a, b)


@PROFILE
@given(levels, resources, letters.filter(bool))
def test_compound_scope_equals_its_letters(level, resource, perms):
    whole = Scopes.parse(f"{level}/{resource}.{perms}")
    split = Scopes.parse(" ".join(f"{level}/{resource}.{c}" for c in perms))
    assert whole.grants == split.grants
    assert _equivalent(whole, split)


@PROFILE
@given(st.lists(v2_scopes, max_size=6), st.lists(extra, max_size=3), st.randoms(use_true_random=False))
def test_order_and_identity_scopes_do_not_matter(clinical, others, rnd):
    tokens = clinical + others
    shuffled = tokens[:]
    rnd.shuffle(shuffled)
    a, b, c = Scopes.parse(tokens), Scopes.parse(shuffled), Scopes.parse(clinical)
    assert a.grants == b.grants == c.grants
    assert _equivalent(a, b) and _equivalent(a, c)


@PROFILE
@given(st.lists(v2_scopes, max_size=5), v2_scopes, st.sampled_from(TYPES), st.sampled_from(INTERACTIONS))
def test_adding_a_scope_never_takes_access_away(base, added, rtype, interaction):
    before, after = Scopes.parse(base), Scopes.parse([*base, added])
    assert before.context(rtype, interaction) <= after.context(rtype, interaction)


@PROFILE
@given(v2_scopes, st.from_regex(r"[a-z_][a-z\-]{0,10}=[A-Za-z0-9|:/.]{1,20}", fullmatch=True))
def test_a_restriction_never_grants(scope, query):
    restricted = Scopes.parse(f"{scope}?{query}")
    assert len(restricted.clinical) == 1 and restricted.clinical[0].restricted
    assert not any(restricted.allows(t, i) for t in TYPES for i in INTERACTIONS)


@PROFILE
@given(levels, resources, letters.filter(bool), st.sampled_from(TYPES), st.sampled_from(INTERACTIONS))
def test_allows_matches_the_grammar(level, resource, perms, rtype, interaction):
    s = Scopes.parse(f"{level}/{resource}.{perms}")
    expected = resource in ("*", rtype) and LETTER[interaction] in perms
    assert s.allows(rtype, interaction) is expected
    assert s.context(rtype, interaction) == ({level} if expected else set())


@PROFILE
@given(st.text(max_size=80))
def test_any_text_parses_without_error_and_only_grammar_scopes_grant(text):
    scopes = Scopes.parse(text)
    for s in scopes.clinical:
        assert parse_scope(s.raw) == s
        assert s.permissions and s.permissions == "".join(c for c in "cruds" if c in s.permissions)
    assert len(scopes.clinical) + len(scopes.other) == len(dict.fromkeys(text.split()))
