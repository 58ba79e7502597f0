#!/usr/bin/env bash
# Install, then edit the bundled example portrait: happy, sad, angry and surprised versions, and the paper's 5x5 grid.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p out
.venv/bin/affectedit edit examples/london_001_neutral.jpg --emotion happy -o out/happy.jpg --force
.venv/bin/affectedit edit examples/london_001_neutral.jpg --valence -0.7 --arousal -0.3 -o out/sad.jpg --force
.venv/bin/affectedit edit examples/london_001_neutral.jpg --emotion angry -o out/angry.jpg --force
.venv/bin/affectedit edit examples/london_001_neutral.jpg --emotion surprised -o out/surprised.jpg --force
.venv/bin/affectedit grid examples/london_001_neutral.jpg -o out/grid.png --force
echo "demo outputs: out/happy.jpg out/sad.jpg out/angry.jpg out/surprised.jpg out/grid.png"
echo "the web page: .venv/bin/affectedit serve  (then open http://127.0.0.1:7860)"
