#!/usr/bin/env bash
# Builds the documentation site into docs/_build/html, from a clean clone:
#
#   bash docs/build.sh
#
# Installs the docs extra (pyproject.toml: Sphinx, myst-nb, the theme, ...)
# into .venv if it is missing (after ./setup.sh), then runs Sphinx with
# warnings as errors (-W, --keep-going to list them all) and nitpicky
# references (-n): a broken internal link, a docstring reference to a name
# that does not exist, a public name without an API entry or a notebook cell
# that raises fails the build. The three tutorials run at every build.
# Serve the result with:
#   .venv/bin/python -m http.server -d docs/_build/html 8000
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "docs/build.sh: $PY is missing; run ./setup.sh first." >&2
  exit 1
fi
if ! "$PY" -c "import sphinx, myst_nb, sphinx_book_theme, sphinx_copybutton, ipykernel" 2> /dev/null; then
  echo "docs/build.sh: installing the docs extra into .venv"
  "$PY" -m pip install --quiet --disable-pip-version-check -e '.[docs]'
fi
rm -rf docs/_build/html docs/_build/doctrees docs/_generated
"$PY" -m sphinx -W --keep-going -n -b html docs docs/_build/html "$@"
echo "docs/build.sh: built docs/_build/html/index.html"
