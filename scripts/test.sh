#!/usr/bin/env bash
# Run the test suite (installs Chromium for the browser test first when it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-browser.sh
.venv/bin/python -m pytest -q "$@"
