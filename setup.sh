#!/usr/bin/env bash
# Installs what jax_aldsgd and its experiments need on a Debian/Ubuntu machine:
# Debian's Fashion-MNIST files (the offline dataset) and the Python packages.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo > /dev/null; then sudo=sudo; fi
  if command -v apt-get > /dev/null; then
    $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist \
      || echo "setup.sh: could not install Debian's dataset-fashion-mnist;" \
              "the offline Fashion-MNIST run needs it." >&2
  else
    echo "setup.sh: no apt-get here; install Debian's dataset-fashion-mnist" \
         "(or pass --config.data_dir to its IDX files) for the offline run." >&2
  fi
fi
"$PYTHON" -m pip install --quiet --upgrade pip
"$PYTHON" -m pip install --quiet -r requirements.txt
"$PYTHON" -m pip install --quiet --no-deps -e .
