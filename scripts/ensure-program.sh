#!/bin/sh
# Install a system program the test suite drives (nginx, Chromium, the Nchan module of
# nginx) when it is missing and apt-get can do it:
# ensure-program.sh WHAT "PACKAGE [FALLBACK_PACKAGE]" CANDIDATE...
# Never fails: without the program, the tests that need it are skipped, and say why.
set -u
what=$1
packages=$2
shift 2
for candidate in "$@"; do
    # A command on PATH, or an absolute path to any file (a module such as Nchan's .so).
    if command -v "$candidate" >/dev/null 2>&1; then
        exit 0
    fi
    case $candidate in
        /*) [ -e "$candidate" ] && exit 0 ;;
    esac
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-program: $what is missing and cannot be installed here (needs root and apt-get);" \
         "the tests that need it will be skipped" >&2
    exit 0
fi
echo "ensure-program: installing $what for the test suite" >&2
export DEBIAN_FRONTEND=noninteractive
install() {
    for package in $packages; do
        apt-get install -y -q "$package" >/dev/null 2>&1 && return 0
    done
    return 1
}
if ! install; then
    apt-get update -q >/dev/null 2>&1
    install || echo "ensure-program: apt-get could not install $what; the tests that need it will be skipped" >&2
fi
exit 0
