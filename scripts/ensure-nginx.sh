#!/bin/sh
# Install nginx for the test suite's end-to-end proxy tests, when it is missing and apt can do it.
# Never fails: without nginx those tests are skipped, and say why.
set -u
for candidate in nginx /usr/sbin/nginx /usr/local/sbin/nginx; do
    if command -v "$candidate" >/dev/null 2>&1; then
        exit 0
    fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-nginx: nginx is missing and cannot be installed here (needs root and apt-get);" \
         "the nginx tests will be skipped" >&2
    exit 0
fi
echo "ensure-nginx: installing nginx-light for the end-to-end proxy tests" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q nginx-light >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q nginx-light >/dev/null 2>&1 || apt-get install -y -q nginx >/dev/null 2>&1 \
        || echo "ensure-nginx: apt-get could not install nginx; the nginx tests will be skipped" >&2
fi
exit 0
