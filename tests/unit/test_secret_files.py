"""Settings from files (issue 23): FACADE_<KEY>_FILE, <key>_file in the TOML file and in [[sources]] tables."""

from __future__ import annotations

import json

import pytest

from app.settings import Settings, SettingsError

PACS = "http://127.0.0.1:8042/dicom-web"


def secret(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_secret_from_a_file_named_in_the_environment_without_its_final_line_break(tmp_path):
    env = {
        "FACADE_DICOMWEB_URL": PACS,
        "FACADE_AUTH_MODE": "open",
        "FACADE_PACS_TOKEN_FILE": secret(tmp_path, "token", "s3cret\n"),
        "FACADE_CAPABILITY_KEYS_FILE": secret(tmp_path, "keys", "k" * 32 + "," + "j" * 32 + "\n"),
    }
    settings = Settings.load(env)
    assert settings.pacs_token == "s3cret"
    assert settings.capability_keys == ("k" * 32, "j" * 32)
    assert "s3cret" not in repr(settings)


def test_the_sources_list_from_a_file(tmp_path):
    sources = [{"name": "a", "dicomweb_url": PACS}, {"name": "b", "dicomweb_url": "http://127.0.0.1:9042/dicom-web"}]
    env = {"FACADE_AUTH_MODE": "open", "FACADE_SOURCES_FILE": secret(tmp_path, "sources.json", json.dumps(sources))}
    assert [s.name for s in Settings.load(env).sources] == ["a", "b"]


def test_file_keys_in_the_toml_file_and_in_a_source_table(tmp_path):
    token = secret(tmp_path, "token", "from-file")
    other = secret(tmp_path, "other", "other-token\n")
    config = tmp_path / "facade.toml"
    config.write_text(
        f'[facade]\nauth_mode = "open"\npacs_token_file = "{token}"\n\n'
        f'[[sources]]\nname = "a"\ndicomweb_url = "{PACS}"\npacs_token_file = "{other}"\n',
        encoding="utf-8",
    )
    settings = Settings.load({}, config_file=config)
    assert settings.pacs_token == "from-file"
    assert settings.sources[0].pacs_token == "other-token"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FACADE_PACS_TOKEN": "x", "FACADE_PACS_TOKEN_FILE": "/nonexistent"}, "both set"),
        ({"FACADE_PACS_TOKEN_FILE": "/nonexistent/token"}, "does not exist"),
        ({"FACADE_PACS_TOKEN_FILE": "/"}, "cannot be read"),
    ],
)
def test_a_file_that_cannot_be_used_is_one_line_without_the_value(env, message):
    with pytest.raises(SettingsError, match=message) as raised:
        Settings.load({"FACADE_DICOMWEB_URL": PACS, "FACADE_AUTH_MODE": "open"} | env)
    assert "\n" not in str(raised.value)


def test_a_value_and_its_file_both_in_a_source_table_are_refused(tmp_path):
    token = secret(tmp_path, "token", "t")
    sources = [{"name": "a", "dicomweb_url": PACS, "pacs_token": "x", "pacs_token_file": token}]
    with pytest.raises(SettingsError, match="pacs_token and pacs_token_file are both given"):
        Settings.load({"FACADE_AUTH_MODE": "open", "FACADE_SOURCES": json.dumps(sources)})
