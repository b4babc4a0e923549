"""app.settings: defaults < TOML file < FACADE_* environment; every problem is one SettingsError line."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from app.settings import Settings, SettingsError

URL = "http://pacs.example.org:8042/dicom-web"
# The example configuration in the repository; an installed service never reads it unless it is named.
EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "config" / "facade.toml"


@pytest.fixture
def toml(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "facade.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def empty(toml) -> Path:
    return toml("")


def load(env: dict[str, str], config_file: Path) -> Settings:
    # Open unless the case says otherwise: these cases are about sources and values, not about authorization.
    return Settings.load({"FACADE_AUTH_MODE": "open"} | env, config_file=config_file)


def error(env: dict[str, str], config_file: Path) -> str:
    with pytest.raises(SettingsError) as info:
        load(env, config_file)
    message = str(info.value)
    assert message and "\n" not in message, message  # one line, for the operator
    return message


class TestSources:
    def test_defaults(self, empty):
        assert load({"FACADE_DICOMWEB_URL": URL}, empty) == Settings(
            dicomweb_url=URL,
            public_url=None,
            wado_url=None,
            pacs_timezone=None,
            default_count=20,
            max_count=100,
            uid_batch=100,
            instance_limit=20000,
            prequery_limit=2000,
            cache_ttl=60.0,
            cache_max_bytes=64 * 1024 * 1024,
            upstream_connect_timeout=3.0,
            upstream_read_timeout=20.0,
            upstream_max_connections=32,
            endpoint_id="wado-rs",
            accession_system=None,
            patient_identifier_system="urn:x-imaging-facade:patient-id",
            issuer_system_prefix="urn:x-imaging-facade:issuer:",
            issuer_systems={},
            log_level="info",
            auth_mode="open",
        )

    def test_toml_file(self, toml):
        path = toml(
            f'[facade]\ndicomweb_url = "{URL}"\nmax_count = 50\ncache_ttl = 5\n'
            'pacs_timezone = "Europe/Berlin"\n'
            '[facade.issuer_systems]\n"HOSP-A" = "http://hospital-a.example.org/mrn"\n'
        )
        s = load({}, path)
        assert (s.dicomweb_url, s.max_count, s.cache_ttl, s.pacs_timezone) == (URL, 50, 5.0, "Europe/Berlin")
        assert s.issuer_systems == {"HOSP-A": "http://hospital-a.example.org/mrn"}
        assert isinstance(s.cache_ttl, float)

    def test_environment_overrides_the_file(self, toml):
        path = toml(f'[facade]\ndicomweb_url = "{URL}"\nmax_count = 50\naccession_system = "http://file/acc"\n')
        env = {
            "FACADE_MAX_COUNT": "70",
            "FACADE_CACHE_TTL": "0.5",
            "FACADE_ACCESSION_SYSTEM": "http://env/acc",
            "FACADE_ISSUER_SYSTEMS": '{"HOSP-A": "http://a"}',
            "UNRELATED": "x",
            "FACADE_UNKNOWN": "x",
        }
        s = load(env, path)
        assert (s.max_count, s.cache_ttl, s.accession_system) == (70, 0.5, "http://env/acc")
        assert s.issuer_systems == {"HOSP-A": "http://a"}

    def test_empty_string_means_unset_for_optional_settings(self, toml):
        path = toml(
            f'[facade]\ndicomweb_url = "{URL}"\npublic_url = ""\nwado_url = ""\n'
            'pacs_timezone = ""\naccession_system = ""\n'
        )
        s = load({}, path)
        assert (s.public_url, s.wado_url, s.pacs_timezone, s.accession_system) == (None, None, None, None)
        assert load({"FACADE_DICOMWEB_URL": URL, "FACADE_PUBLIC_URL": ""}, path).public_url is None

    def test_config_file_named_by_the_environment(self, toml):
        path = toml(f'[facade]\ndicomweb_url = "{URL}"\nmax_count = 33\n')
        assert Settings.load({"FACADE_CONFIG": str(path), "FACADE_AUTH_MODE": "open"}).max_count == 33

    def test_the_example_config_file_loads(self):
        assert EXAMPLE_CONFIG.exists()
        s = Settings.load({"FACADE_AUTH_MODE": "open"}, config_file=EXAMPLE_CONFIG)
        assert s.dicomweb_url == "http://127.0.0.1:8042/dicom-web"
        assert s.issuer_systems == {}

    def test_the_example_config_is_secure_by_default(self):
        with pytest.raises(SettingsError, match="needs jwks_url, jwks_file or introspection_url"):
            Settings.load({}, config_file=EXAMPLE_CONFIG)

    def test_the_example_config_documents_every_setting(self):
        import dataclasses
        import tomllib

        documented = set(tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))["facade"])
        # sources: [[sources]] tables of their own, shown commented out at the end of the file
        assert documented | {"sources"} == {f.name for f in dataclasses.fields(Settings)}
        assert "# [[sources]]" in EXAMPLE_CONFIG.read_text(encoding="utf-8")

    def test_the_example_config_states_the_built_in_defaults(self):
        # What an installed service has without any file must be what the example file (and docs/configuration.md) says.
        import dataclasses
        import tomllib

        documented = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))["facade"]
        from_file = Settings.load({"FACADE_AUTH_MODE": "open"}, config_file=EXAMPLE_CONFIG)
        built_in = Settings.load({"FACADE_AUTH_MODE": "open", "FACADE_DICOMWEB_URL": documented["dicomweb_url"]})
        differ = [
            f.name for f in dataclasses.fields(Settings) if getattr(from_file, f.name) != getattr(built_in, f.name)
        ]
        assert differ == []

    def test_no_file_is_read_unless_named(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        (tmp_path / "config").mkdir()
        (tmp_path / "config" / "facade.toml").write_text('[facade]\nauth_mode = "open"\n', encoding="utf-8")
        with pytest.raises(SettingsError, match="needs jwks_url, jwks_file or introspection_url"):
            Settings.load({"FACADE_DICOMWEB_URL": URL})

    def test_built_in_default_fails_closed(self):
        with pytest.raises(SettingsError, match="FACADE_AUTH_MODE=open"):
            Settings.load({"FACADE_DICOMWEB_URL": URL})
        assert Settings.load({"FACADE_DICOMWEB_URL": URL, "FACADE_AUTH_MODE": "open"}).auth_mode == "open"

    def test_derived_values(self):
        s = Settings(auth_mode="open", dicomweb_url=URL + "/", pacs_timezone="Europe/Berlin")
        assert s.wado_base == URL
        assert s.tz == ZoneInfo("Europe/Berlin")
        assert Settings(auth_mode="open", dicomweb_url=URL, wado_url="https://wado.example.org/dw/").wado_base == (
            "https://wado.example.org/dw"
        )
        assert Settings(auth_mode="open", dicomweb_url=URL).tz is None

    def test_settings_are_frozen(self):
        s = Settings(auth_mode="open", dicomweb_url=URL)
        with pytest.raises(AttributeError):
            s.max_count = 5  # type: ignore[misc]


class TestErrors:
    def test_missing_dicomweb_url(self, empty, toml):
        assert "dicomweb_url is required" in error({}, empty)
        assert "dicomweb_url is required" in error({}, toml("[facade]\n"))
        in_file = toml(f'[facade]\ndicomweb_url="{URL}"')
        assert "dicomweb_url is required" in error({"FACADE_DICOMWEB_URL": ""}, in_file)

    @pytest.mark.parametrize("name", ["DICOMWEB_URL", "PUBLIC_URL", "WADO_URL"])
    @pytest.mark.parametrize("value", ["ftp://pacs/dw", "pacs:8042/dicom-web", "not a url", "http://", "/dicom-web"])
    def test_bad_url(self, empty, name, value):
        env = {"FACADE_DICOMWEB_URL": URL, f"FACADE_{name}": value}
        assert error(env, empty) == f"{name.lower()} must be an absolute http(s) URL, got {value!r}"

    def test_credentials_in_a_bad_url_are_not_echoed(self, empty):
        message = error({"FACADE_DICOMWEB_URL": "ftp://orthanc:s3cret@pacs:8042/dw"}, empty)
        assert "s3cret" not in message and "orthanc" not in message
        assert message == "dicomweb_url must be an absolute http(s) URL, got 'ftp://***@pacs:8042/dw'"

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("MAX_COUNT", "abc"),
            ("MAX_COUNT", "1.5"),
            ("UID_BATCH", ""),
            ("CACHE_MAX_BYTES", "64MB"),
            ("DEFAULT_COUNT", "0x10"),
        ],
    )
    def test_bad_int(self, empty, name, value):
        message = error({"FACADE_DICOMWEB_URL": URL, f"FACADE_{name}": value}, empty)
        assert message.startswith(f"{name.lower()} must be an integer")

    @pytest.mark.parametrize("text", ["max_count = true", "max_count = 1.5", 'max_count = "many"', "max_count = [1]"])
    def test_bad_int_in_toml(self, toml, text):
        message = error({}, toml(f'[facade]\ndicomweb_url = "{URL}"\n{text}\n'))
        assert message.startswith("max_count must be an integer")

    @pytest.mark.parametrize("value", ["abc", "1,5", ""])
    def test_bad_number(self, empty, value):
        message = error({"FACADE_DICOMWEB_URL": URL, "FACADE_CACHE_TTL": value}, empty)
        assert message == f"cache_ttl must be a number, got {value!r}"

    @pytest.mark.parametrize(("name", "value"), [("MAX_COUNT", "0"), ("UID_BATCH", "-1"), ("CACHE_MAX_BYTES", "0")])
    def test_counts_must_be_positive(self, empty, name, value):
        message = error({"FACADE_DICOMWEB_URL": URL, f"FACADE_{name}": value}, empty)
        assert message == f"{name.lower()} must be a positive integer"

    def test_default_count_above_max_count(self, empty):
        env = {"FACADE_DICOMWEB_URL": URL, "FACADE_DEFAULT_COUNT": "200"}
        assert error(env, empty) == "default_count must not exceed max_count"

    @pytest.mark.parametrize("name", ["CACHE_TTL", "UPSTREAM_CONNECT_TIMEOUT", "UPSTREAM_READ_TIMEOUT"])
    def test_negative_durations(self, empty, name):
        env = {"FACADE_DICOMWEB_URL": URL, f"FACADE_{name}": "-1"}
        assert error(env, empty) == f"{name.lower()} must be a finite, non-negative number"

    def test_unknown_key_in_toml(self, toml):
        path = toml(f'[facade]\ndicomweb_url = "{URL}"\ncolour = "blue"\nmax_cont = 5\n')
        assert error({}, path) == f"unknown setting(s) in {path}: colour, max_cont"

    @pytest.mark.parametrize("zone", ["Mars/Olympus", "CEST", "../../etc/passwd", "/etc/localtime", "Europe/"])
    def test_bad_time_zone(self, empty, zone):
        env = {"FACADE_DICOMWEB_URL": URL, "FACADE_PACS_TIMEZONE": zone}
        assert error(env, empty) == f"pacs_timezone {zone!r} is not an IANA time zone"

    def test_invalid_toml(self, toml):
        path = toml("[facade\n")
        assert error({}, path).startswith(f"{path}: not valid TOML (")

    def test_toml_that_is_not_utf8(self, tmp_path):
        path = tmp_path / "facade.toml"
        path.write_bytes(b'[facade]\ndicomweb_url = "\xff"\n')
        assert error({}, path).startswith(f"{path}: not valid TOML (")

    def test_missing_config_file(self, tmp_path):
        missing = tmp_path / "nope.toml"
        assert error({"FACADE_DICOMWEB_URL": URL}, missing) == f"config file {missing} does not exist"
        with pytest.raises(SettingsError, match="does not exist"):
            Settings.load({"FACADE_DICOMWEB_URL": URL, "FACADE_CONFIG": str(missing)})

    @pytest.mark.parametrize("value", ["[1]", '{"A": 1}', "{bad", '"x"'])
    def test_bad_issuer_systems(self, empty, value):
        assert error({"FACADE_DICOMWEB_URL": URL, "FACADE_ISSUER_SYSTEMS": value}, empty).startswith(
            "issuer_systems must be a"
        )

    def test_bad_issuer_systems_in_toml(self, toml):
        path = toml(f'[facade]\ndicomweb_url = "{URL}"\n[facade.issuer_systems]\nA = 1\n')
        assert error({}, path) == "issuer_systems must be a table of strings"

    def test_non_string_for_a_string_setting(self, toml):
        assert error({}, toml(f'[facade]\ndicomweb_url = "{URL}"\nendpoint_id = 5\n')) == (
            "endpoint_id must be a string"
        )

    @pytest.mark.parametrize("value", ["", "x" * 65])
    def test_endpoint_id_length(self, empty, value):
        env = {"FACADE_DICOMWEB_URL": URL, "FACADE_ENDPOINT_ID": value}
        assert error(env, empty) == "endpoint_id must be a FHIR id (1-64 of A-Z a-z 0-9 - .)"

    @pytest.mark.parametrize("value", ["a b/c", "wado_rs", "wadö"])
    def test_endpoint_id_must_be_a_fhir_id(self, empty, value):
        error({"FACADE_DICOMWEB_URL": URL, "FACADE_ENDPOINT_ID": value}, empty)

    @pytest.mark.parametrize("value", ["http://pacs:abc/dw", "http://pacs:99999/dw", "ftp://u:pw@pacs:abc/dw"])
    def test_bad_port(self, empty, value):
        error({"FACADE_DICOMWEB_URL": value}, empty)

    def test_config_path_that_is_a_directory(self, tmp_path):
        error({"FACADE_DICOMWEB_URL": URL}, tmp_path)

    @pytest.mark.parametrize("source", ["env-nan", "toml-bool"])
    def test_float_settings_reject_nan_and_booleans(self, toml, source):
        if source == "env-nan":
            error({"FACADE_DICOMWEB_URL": URL, "FACADE_CACHE_TTL": "nan"}, toml(""))
        else:
            error({}, toml(f'[facade]\ndicomweb_url = "{URL}"\ncache_ttl = true\n'))


class TestWado:
    """Issue 12 settings: wado_mode, wado_access, capability_keys (secret), capability_ttl, cors_origins."""

    KEY = "k" * 32

    def test_defaults(self, empty):
        s = load({"FACADE_DICOMWEB_URL": URL}, empty)
        assert (s.wado_mode, s.wado_access, s.capability_keys, s.capability_ttl, s.cors_origins) == (
            "gateway",
            "token",
            (),
            3600.0,
            (),
        )

    def test_keys_from_the_environment_and_toml(self, empty, toml):
        env = {"FACADE_DICOMWEB_URL": URL, "FACADE_CAPABILITY_KEYS": f"{self.KEY}, {'j' * 40} ,"}
        assert load(env, empty).capability_keys == (self.KEY, "j" * 40)
        path = toml(f'[facade]\ndicomweb_url = "{URL}"\ncapability_keys = ["{self.KEY}"]\ncors_origins = "*"\n')
        s = load({}, path)
        assert s.capability_keys == (self.KEY,) and s.cors_origins == ("*",)

    def test_keys_are_hidden_from_repr_and_messages(self, empty):
        s = load({"FACADE_DICOMWEB_URL": URL, "FACADE_CAPABILITY_KEYS": self.KEY}, empty)
        assert self.KEY not in repr(s)
        message = error({"FACADE_DICOMWEB_URL": URL, "FACADE_CAPABILITY_KEYS": f"{self.KEY},short-secret"}, empty)
        assert "32" in message and "short-secret" not in message

    def test_capability_mode_needs_keys_in_smart_mode(self, empty, tmp_path):
        jwks = tmp_path / "jwks.json"
        jwks.write_text('{"keys": []}', encoding="utf-8")
        smart = {"FACADE_DICOMWEB_URL": URL, "FACADE_AUTH_MODE": "smart", "FACADE_JWKS_FILE": str(jwks)}
        smart |= {"FACADE_TOKEN_ISSUER": "https://a", "FACADE_TOKEN_AUDIENCE": "https://b"}
        smart |= {"FACADE_WADO_ACCESS": "capability"}
        with pytest.raises(SettingsError, match="capability_keys"):
            Settings.load(smart, config_file=empty)
        s = Settings.load(smart | {"FACADE_CAPABILITY_KEYS": self.KEY}, config_file=empty)
        assert s.uses_capabilities and not s.requires_token
        # Open mode: the gateway serves everyone, no capability is issued, so no key is needed.
        assert not load({"FACADE_DICOMWEB_URL": URL, "FACADE_WADO_ACCESS": "capability"}, empty).uses_capabilities

    @pytest.mark.parametrize(
        ("env", "needle"),
        [
            ({"FACADE_WADO_MODE": "proxy"}, "wado_mode"),
            ({"FACADE_WADO_ACCESS": "cookie"}, "wado_access"),
            ({"FACADE_WADO_ACCESS": "capability", "FACADE_WADO_MODE": "direct"}, "gateway"),
            ({"FACADE_CAPABILITY_TTL": "0"}, "capability_ttl"),
            ({"FACADE_CAPABILITY_TTL": "nan"}, "capability_ttl"),
            ({"FACADE_CORS_ORIGINS": "https://a.example.org/path"}, "cors_origins"),
            ({"FACADE_CORS_ORIGINS": "*,https://a.example.org"}, "cors_origins"),
        ],
    )
    def test_bad_values(self, empty, env, needle):
        assert needle in error({"FACADE_DICOMWEB_URL": URL} | env, empty)

    def test_bad_list_in_toml(self, toml):
        path = toml(f'[facade]\ndicomweb_url = "{URL}"\ncors_origins = [1, 2]\n')
        assert "cors_origins" in error({}, path)

    def test_requires_token(self, empty):
        base = {"FACADE_DICOMWEB_URL": URL}
        assert not load(base, empty).requires_token  # open gateway
        assert not load(base | {"FACADE_WADO_MODE": "direct"}, empty).requires_token
        assert load(base | {"FACADE_WADO_MODE": "direct", "FACADE_PACS_AUTH": "forward"}, empty).requires_token
        direct_said = base | {"FACADE_WADO_MODE": "direct", "FACADE_WADO_REQUIRES_TOKEN": "true"}
        assert load(direct_said, empty).requires_token


SOURCES_TOML = """
[facade]
pixm_url = "https://mpi.example.org/fhir"

[[sources]]
name = "north"
dicomweb_url = "http://user:secret@10.1.0.5:8042/dicom-web/"
issuer = "NORTH"
upstream_budget = 5

[[sources]]
name = "south"
dicomweb_url = "http://10.2.0.7:8042/dicom-web"
manifests_writable = false
"""


class TestSeveralArchives:
    """[[sources]] and FACADE_SOURCES (issue 21)."""

    def test_sources_from_the_file_with_their_overrides(self, toml):
        s = load({}, toml(SOURCES_TOML))
        assert s.federated and s.dicomweb_url == "" and s.pixm_url == "https://mpi.example.org/fhir"
        north, south = s.pacs_sources
        assert (north.name, north.issuer, north.upstream_budget, north.manifests_writable) == (
            "north",
            "NORTH",
            5.0,
            True,
        )
        assert north.dicomweb_url == "http://user:secret@10.1.0.5:8042/dicom-web"
        assert (south.issuer, south.upstream_budget, south.manifests_writable) == (None, 20.0, False)
        assert s.accepts_manifests
        assert "secret" not in repr(s)

    def test_sources_from_the_environment_as_json(self, empty):
        env = {"FACADE_SOURCES": '[{"name": "a", "dicomweb_url": "http://h:1/d", "issuer": "A"}]'}
        (a,) = load(env, empty).pacs_sources
        assert (a.name, a.issuer) == ("a", "A")

    def test_one_pacs_is_a_source_named_pacs(self, empty):
        s = load({"FACADE_DICOMWEB_URL": URL}, empty)
        assert not s.federated and [(p.name, p.dicomweb_url, p.issuer) for p in s.pacs_sources] == [("pacs", URL, None)]

    @pytest.mark.parametrize(
        ("sources", "message"),
        [
            ("[]", "non-empty list"),
            ("{}", "non-empty list"),
            ("not json", "JSON list"),
            ('[{"name": "North", "dicomweb_url": "http://h/d"}]', "1-32 characters of a-z"),
            ('[{"name": "' + "a" * 33 + '", "dicomweb_url": "http://h/d"}]', "1-32 characters"),
            ('[{"name": "a", "dicomweb_url": "ftp://h/d"}]', "absolute http(s) URL"),
            ('[{"name": "a", "dicomweb_url": "http://h/d"}, {"name": "a", "dicomweb_url": "http://k/d"}]', "unique"),
            ('[{"name": "a", "dicomweb_url": "http://h/d", "colour": "red"}]', "unknown setting(s) colour"),
            ('[{"name": "a", "dicomweb_url": "http://h/d", "issuer": "A\\\\\\\\B"}]', "backslash"),
            ('[{"name": "a", "dicomweb_url": "http://h/d", "pacs_timezone": "Mars/Olympus"}]', "IANA"),
            ('[{"name": "a", "dicomweb_url": "http://h/d", "upstream_budget": 0}]', "positive"),
            ('[{"name": "a", "dicomweb_url": "http://h/d", "breaker_failures": -1}]', "non-negative integer"),
        ],
    )
    def test_a_bad_source_is_one_clear_line(self, empty, sources, message):
        assert message in error({"FACADE_SOURCES": sources}, empty)

    def test_one_pacs_and_a_list_are_mutually_exclusive(self, toml):
        assert "mutually exclusive" in error({"FACADE_DICOMWEB_URL": URL}, toml(SOURCES_TOML))

    def test_several_archives_need_the_gateway(self, toml):
        assert "wado_mode = direct needs one PACS" in error({"FACADE_WADO_MODE": "direct"}, toml(SOURCES_TOML))
