#!/usr/bin/env bash
# Download the authors' datasets (and, with --with-ckpts, checkpoints) from the Hugging Face Hub.
# All flags go to scripts/download_artifacts.py; see `--help`.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/download_artifacts.py" "$@"
