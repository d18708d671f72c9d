#!/usr/bin/env bash
# Installs jax_aldsgd, its experiments and its tests into ./.venv, and Debian's
# Fashion-MNIST files (the offline dataset).
#
# Works on a stock Debian 12 / Ubuntu 24.04 with only `git` and the system
# `python3` (which refuses `pip install`, PEP 668): the packages go into a
# virtual environment, never into the system Python. If a virtualenv or conda
# env is already active (VIRTUAL_ENV / CONDA_PREFIX), the packages go there
# instead and ./.venv becomes a link to it, so the README's `.venv/bin/python`
# commands work either way and no environment is nested in another.
set -euo pipefail
cd "$(dirname "$0")"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@";
  elif command -v sudo > /dev/null; then sudo "$@";
  else echo "setup.sh: need root (or sudo) to run: $*" >&2; return 1; fi
}

apt_updated=""
apt_install() {
  command -v apt-get > /dev/null || return 1
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq && apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@"
}

# 1. The Python environment.
active="${VIRTUAL_ENV:-${CONDA_PREFIX:-}}"
if [ -n "$active" ]; then
  if [ -e .venv ] && [ ! -L .venv ]; then
    echo "setup.sh: an environment is active ($active), but ./.venv is a separate" \
         "environment; remove ./.venv, or deactivate first to use it." >&2
    exit 1
  fi
  ln -sfn "$active" .venv
  echo "setup.sh: installing into the active environment $active (.venv links to it)"
elif [ ! -x .venv/bin/python ]; then
  PYTHON3=${PYTHON3:-python3}
  if ! command -v "$PYTHON3" > /dev/null; then
    echo "setup.sh: $PYTHON3 not found; install Python 3.11 or newer" \
         "(apt-get install python3)." >&2
    exit 1
  fi
  rm -rf .venv
  if ! "$PYTHON3" -m venv .venv 2> /dev/null; then
    # Debian and Ubuntu ship venv's pip bootstrap separately.
    rm -rf .venv
    version=$("$PYTHON3" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install python3-venv "python${version}-venv" || apt_install python3-venv || {
      echo "setup.sh: '$PYTHON3 -m venv' failed and python3-venv could not be" \
           "installed; install it (apt-get install python3-venv) and rerun." >&2
      exit 1
    }
    "$PYTHON3" -m venv .venv
  fi
fi
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "setup.sh: $PY is missing (is the active environment's python in bin/?)." >&2
  exit 1
fi

# 2. The offline dataset (Debian's Fashion-MNIST IDX files).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  apt_install dataset-fashion-mnist \
    || echo "setup.sh: could not install Debian's dataset-fashion-mnist; the" \
            "offline Fashion-MNIST run needs it (or --config.data_dir=DIR with" \
            "its IDX files)." >&2
fi

# 3. The packages.
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps -e .
echo "setup.sh: ready; run with $PY"
