# Sourced by demo.sh and test.sh: a virtual environment in .venv with edge-agent installed
# (editable) and the extras named in $EXTRAS. Installing again is skipped when nothing it
# depends on changed: .venv/.edge-agent-installed holds a hash of pyproject.toml, the extras
# and the Python version (the install is editable, so source changes need no reinstall).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null || ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "edge-agent needs Python 3.11 or newer as '$PY' (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setting up .venv (first run: a few minutes of downloads) ..." >&2
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
# The stamp: "<hash of pyproject.toml and the Python version> <extras installed>".
STAMP=.venv/.edge-agent-installed
WANT=$( { cat pyproject.toml; .venv/bin/python -VV; } | sha256sum | cut -d' ' -f1)
read -r HAVE HAVE_EXTRAS < "$STAMP" 2>/dev/null || HAVE=""
current=false
if [ "$HAVE" = "$WANT" ] && .venv/bin/python -c 'import edge_agent' 2>/dev/null; then
  current=true
  for extra in ${EXTRAS//,/ }; do
    case ",${HAVE_EXTRAS:-}," in *",$extra,"*) ;; *) current=false ;; esac
  done
fi
if [ "$current" != true ]; then
  rm -f "$STAMP"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS}]"
  echo "$WANT $EXTRAS" > "$STAMP"
fi
