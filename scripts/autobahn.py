"""Run Autobahn|Testsuite's fuzzing client against rtbus's websocket codec.

    .venv/bin/python scripts/autobahn.py [--cases '12.*' '13.*'] [--reports DIR]

Autobahn|Testsuite (`wstest`) runs only on Python 2.7. This script:

1. finds a Python 2.7 (`--python2`, else `pyenv which python2.7`, else `python2.7` on
   PATH; `pyenv install 2.7.18` makes one);
2. installs the testsuite and its pinned Python 2 dependencies from PyPI, once, into a
   cache directory outside the repository (`--cache`, default ~/.cache/rtbus-autobahn);
3. starts the echo harness (`scripts/autobahn_echo.py`, rtbus's codec on plain sockets)
   on a free port, runs `wstest -m fuzzingclient` on the selected cases, and
4. prints each case's verdict by behaviour, writes the HTML and JSON reports under
   `--reports` (default test-artifacts/autobahn), and exits 1 when a case got a verdict
   other than OK, NON-STRICT or INFORMATIONAL.

The default cases are all of 1.* to 10.* (the core protocol) and 12.*, 13.*
(permessage-deflate). Nothing of the testsuite is kept in this repository.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import autobahn_echo  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CASES = [f"{n}.*" for n in range(1, 11)] + ["12.*", "13.*"]
ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}
TESTSUITE = "autobahntestsuite==25.10.1"
# The last releases that run on Python 2.7, as the testsuite's own requirements pin them.
PY2_REQUIREMENTS = [
    "txaio==2.1.0", "incremental==16.10.1", "pyOpenSSL==19.1.0", "cryptography==3.3.2",
    "Twisted==19.10.0", "zope.interface==4.6.0", "jinja2==2.11.3", "markupsafe==1.1.1",
    "Werkzeug==1.0.1", "klein==17.10.0", "service_identity==18.1.0", "unittest2==1.1.0",
    "six==1.16.0", "autobahn[twisted,accelerate]==0.10.9",
]
# wstest imports its packages from the cache directory; zope's namespace package needs the
# .pth files of that directory to be processed, hence addsitedir rather than PYTHONPATH.
WSTEST = ("import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ['wstest'] + sys.argv[2:]; "
          "from autobahntestsuite.wstest import run; run()")


def find_python2(given: str | None) -> str | None:
    """A working Python 2.7: `given`, else one pyenv installed, else python2.7 on PATH."""
    candidates = [given] if given else []
    if not given and shutil.which("pyenv"):
        versions = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True)
        for version in versions.stdout.split():
            if version.startswith("2.7"):
                prefix = subprocess.run(["pyenv", "prefix", version], capture_output=True, text=True)
                candidates.append(os.path.join(prefix.stdout.strip(), "bin", "python2.7"))
    if not given:
        candidates.append(shutil.which("python2.7"))
    for candidate in filter(None, candidates):
        try:
            version = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                     capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if version.returncode == 0 and version.stdout.strip() == "(2, 7)":
            return candidate
    return None


def install_testsuite(python2: str, cache: str) -> None:
    """Install wstest into `cache` unless it is there already."""
    marker = os.path.join(cache, ".installed-" + TESTSUITE)
    if os.path.exists(marker):
        return
    os.makedirs(cache, exist_ok=True)
    print(f"installing {TESTSUITE} for {python2} into {cache} (once)", flush=True)
    pip = [python2, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-warn-script-location", "--target", cache, "--upgrade"]
    # Run from the cache: in the repository, pip would take rtbus's egg-info for an
    # installed package and complain about its requirements.
    subprocess.run(pip + PY2_REQUIREMENTS, check=True, cwd=cache)
    subprocess.run(pip + ["--no-deps", TESTSUITE], check=True, cwd=cache)
    open(marker, "w").close()


def run_cases(python2: str, cache: str, port: int, cases: list[str], reports: str,
              timeout: float) -> dict:
    os.makedirs(reports, exist_ok=True)
    spec = {"outdir": reports, "servers": [{"agent": "rtbus-codec", "url": f"ws://127.0.0.1:{port}"}],
            "cases": cases, "exclude-cases": [], "exclude-agent-cases": {}}
    spec_path = os.path.join(reports, "fuzzingclient.json")
    with open(spec_path, "w") as file:
        json.dump(spec, file, indent=2)
    log_path = os.path.join(reports, "wstest.log")
    with open(log_path, "w") as log:
        subprocess.run([python2, "-c", WSTEST, cache, "-m", "fuzzingclient", "-s", spec_path],
                       stdout=log, stderr=subprocess.STDOUT, check=True, timeout=timeout, cwd=reports)
    with open(os.path.join(reports, "index.json")) as file:
        return json.load(file)["rtbus-codec"]


def case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def report(results: dict) -> int:
    """Print the verdicts; return how many cases failed."""
    by_group: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failed = []
    for case in sorted(results, key=case_key):
        result = results[case]
        by_group[case.split(".")[0]][result["behavior"]] += 1
        if result["behavior"] not in ACCEPTED or result["behaviorClose"] not in ACCEPTED:
            failed.append((case, result["behavior"], result["behaviorClose"]))
    for group in sorted(by_group, key=int):
        counts = ", ".join(f"{count} {behavior}" for behavior, count in sorted(by_group[group].items()))
        print(f"  {group}.*: {counts}")
    for case, behavior, close in failed:
        print(f"  FAILED {case}: behavior {behavior}, close {close}")
    total = len(results)
    print(f"{total - len(failed)} passed, {len(failed)} failed")
    return len(failed)


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="case patterns")
    options.add_argument("--python2", help="a Python 2.7 interpreter")
    options.add_argument("--cache", default=os.path.expanduser("~/.cache/rtbus-autobahn"),
                         help="where the testsuite is installed")
    options.add_argument("--reports", default=os.path.join(REPO, "test-artifacts", "autobahn"))
    options.add_argument("--threshold", type=int, default=0,
                         help="the harness echoes shorter messages uncompressed (default 0)")
    options.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run")
    args = options.parse_args()
    python2 = find_python2(args.python2)
    if python2 is None:
        print("no Python 2.7 found: Autobahn|Testsuite needs one (for example "
              "`pyenv install 2.7.18`, or give --python2)", file=sys.stderr)
        return 2
    install_testsuite(python2, args.cache)
    server = autobahn_echo.start(threshold=args.threshold)
    started = time.monotonic()
    try:
        results = run_cases(python2, args.cache, server.port, args.cases, args.reports, args.timeout)
    finally:
        server.shutdown()
    print(f"Autobahn|Testsuite {', '.join(args.cases)} against the rtbus codec "
          f"in {time.monotonic() - started:.0f} s (reports in {args.reports}):")
    return 1 if report(results) else 0


if __name__ == "__main__":
    sys.exit(main())
