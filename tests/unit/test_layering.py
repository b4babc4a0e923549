"""The layering contracts (pyproject.toml [tool.importlinter]) hold, and really fail on a wrong-way import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(where: Path) -> subprocess.CompletedProcess[str]:
    command = [str(LINT)] if LINT.exists() else ["lint-imports"]
    return subprocess.run(
        [*command, "--no-cache"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"PYTHONPATH": str(where)},
    )


def test_the_contracts_hold():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:]


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("app/fhir/bundle.py", "import httpx", "The pure core does no I/O"),
        ("app/mapping/patient.py", "from ..pacs import cache", "Only the use cases"),
        ("app/dicom/qido.py", "from ..fhir import search", "Layers"),
    ],
)
def test_a_wrong_way_import_breaks_a_contract(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "app", tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", encoding="utf-8")
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert broken in done.stdout.split("Broken contracts")[-1]
