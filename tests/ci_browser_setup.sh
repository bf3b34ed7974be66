#!/bin/sh
# What the browser test of `zsearch review` (tests/test_review.py) needs on a Debian/Ubuntu CI box:
# a headless Chromium, its matching chromedriver, and selenium. Idempotent; run as root.
set -eu
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
fi
python3 -c "import selenium" 2>/dev/null || python3 -m pip install -q "selenium>=4.10"
