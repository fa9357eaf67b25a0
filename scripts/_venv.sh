# Sourced by scripts/run and scripts/test: create .venv on first use and install the locked
# dependencies (requirements.lock) plus this project, editable. Re-installs when the lock or
# pyproject.toml changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "agent-relay needs Python 3.11 or newer (found: $("$python" --version 2>&1))" >&2
  exit 1
}
venv="$root/.venv"
stamp="$venv/.installed-$1"
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=25.1"
  if [ "$1" = dev ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c requirements.lock -e . --group dev
  else
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c requirements.lock -e .
  fi
  echo "$want" > "$stamp"
fi
