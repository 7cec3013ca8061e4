#!/usr/bin/env bash
# Make sure a chromium binary is there for the HTML report's browser tests (tests/test_report_html.py).
# Installs Debian's `chromium` with apt when it is missing and this user may (root, or passwordless sudo);
# otherwise says why and exits 0: the browser tests then skip with that reason.
set -u
for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: no chromium and no apt-get here; the browser tests will be skipped" \
         "(install chromium, or set EMERGELAB_CHROMIUM=/path/to/chromium)" >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "ensure_chromium: chromium is missing and installing it needs root (apt-get install chromium);" \
         "the browser tests will be skipped" >&2
    exit 0
fi
echo "ensure_chromium: installing Debian's chromium (apt-get install chromium) for the browser tests" >&2
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; } >&2; then
    echo "ensure_chromium: apt-get install chromium failed; the browser tests will be skipped" >&2
fi
exit 0
