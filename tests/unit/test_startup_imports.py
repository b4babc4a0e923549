"""What a process loads before its first request: memory per worker (issue 19) is paid N times with --workers N.

pydicom (and numpy, which it imports) add about 26 MiB to every process; they are loaded on first use only (a
manifest created, an includefield by an unusual keyword on the gateway), never at start.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support.facade import ROOT


def test_the_app_starts_without_pydicom_or_numpy():
    code = (
        "import sys; from app.main import create_app; from app.settings import Settings; "
        "create_app(Settings.load({'FACADE_AUTH_MODE': 'open', 'FACADE_DICOMWEB_URL': 'http://127.0.0.1:9/dw'})); "
        "print(sorted(m for m in ('pydicom', 'numpy', 'highdicom') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
