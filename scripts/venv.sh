# Sourced by .ci/run, scripts/demo and scripts/test: the project's virtualenv in .venv, made on first use.
# Debian's python3 refuses `pip install` outside a virtualenv (PEP 668, externally-managed-environment), and a
# stock bookworm has no venv module until python3-venv is installed, so that is installed when it is missing.
# After sourcing: $PY is the virtualenv's python.
VENV="${FACADE_VENV:-$(pwd)/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    echo "Installing python3-venv (Debian's python3 has no venv module without it) ..."
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
