#!/bin/sh
# Install Debian's chromium for the test suite's browser tests, when it is missing and apt can do it.
# Never fails: without chromium those tests are skipped, and say why. Playwright's own browser
# downloads are never used: the tests launch the system executable.
set -u
for candidate in chromium /usr/bin/chromium chromium-browser; do
    if command -v "$candidate" >/dev/null 2>&1; then
        exit 0
    fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: chromium is missing and cannot be installed here (needs root and apt-get);" \
         "the browser tests will be skipped" >&2
    exit 0
fi
echo "ensure-chromium: installing chromium for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q chromium >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || echo "ensure-chromium: apt-get could not install chromium; the browser tests will be skipped" >&2
fi
exit 0
