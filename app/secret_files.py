"""Settings read from files (issue 23): ``FACADE_<KEY>_FILE`` in the environment, ``<key>_file`` in the TOML file
and in a ``[[sources]]`` table, as container platforms mount secrets (Docker and Kubernetes secrets, systemd
credentials): the value never has to sit in an environment variable, a compose file or a process listing.

Any setting may come from a file; it is meant for the secrets (``pacs_token``, ``capability_keys``,
``introspection_client_secret``, ``ehr_token``) and for the ``[[sources]]`` list (``FACADE_SOURCES_FILE``: the
JSON list). The file's content is the value, without its final line break (``echo`` and most editors add one).
Naming the value and its file both is refused, as is a file that cannot be read: one line, never the content.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["FileSettingError", "from_environment", "from_files"]

SUFFIX = "_file"


class FileSettingError(ValueError):
    """A setting's file is missing, unreadable or named beside the value; one line for the operator."""


def read_value(path: str, where: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileSettingError(f"{where}: file {path} does not exist") from None
    except UnicodeDecodeError:
        raise FileSettingError(f"{where}: file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise FileSettingError(f"{where}: file {path} cannot be read ({exc.strerror})") from None
    return text[:-1] if text.endswith("\n") else text


def from_files(table: Mapping[str, Any], names: set[str], where: str) -> dict[str, Any]:
    """A TOML table with each ``<name>_file = "<path>"`` (``name`` a known setting) replaced by ``name`` and the
    file's content; other keys as they are (unknown ones are the caller's to refuse)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key[: -len(SUFFIX)] if key.endswith(SUFFIX) else None
        if name is None or name not in names:
            out.setdefault(key, value)
            continue
        if name in table:
            raise FileSettingError(f"{where}: {name} and {key} are both given; keep one")
        if not isinstance(value, str) or not value:
            raise FileSettingError(f"{where}: {key} must be a file path")
        out[name] = read_value(value, f"{where}.{key}")
    return out


def from_environment(environ: Mapping[str, str], prefix: str, names: list[str]) -> dict[str, str]:
    """``<prefix><NAME>`` or ``<prefix><NAME>_FILE`` for each setting name; both given is refused."""
    out: dict[str, str] = {}
    for name in names:
        variable = prefix + name.upper()
        raw, path = environ.get(variable), environ.get(variable + "_FILE")
        if raw is not None and path is not None:
            raise FileSettingError(f"{variable} and {variable}_FILE are both set; keep one")
        if path is not None:
            out[name] = read_value(path, variable + "_FILE")
        elif raw is not None:
            out[name] = raw
    return out
