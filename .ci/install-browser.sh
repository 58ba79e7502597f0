#!/bin/sh
# Install what tests/test_web_browser.py needs: headless Chromium and its matching chromedriver
# (Debian packages; binaries /usr/bin/chromium and /usr/bin/chromedriver). Idempotent: does
# nothing when both are already installed. Selenium itself comes from `pip install -e .[dev]`.
set -eu

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "install-browser: chromium and chromedriver already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-browser: need root (or sudo) to install chromium chromium-driver" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium chromium-driver  # with recommends: fonts for readable screenshots
chromium --version
chromedriver --version
