# rtbus — the two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run test docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Start the server: prefork master with 2 HTTP workers, the gevent longpolling
## process and a cron worker, on an embedded PostgreSQL unless a database is configured,
## with the demo routes on: open http://127.0.0.1:8069/ for the live board.
run: install
	$(BIN)/rtbus-server --workers=2 --demo-mode $(ARGS)

## Run the whole test suite (it starts its own throwaway PostgreSQL clusters, and its own
## nginx and headless Chromium, installed here with apt-get when missing and possible).
test: install
	sh scripts/ensure-program.sh nginx "nginx-light nginx" nginx /usr/sbin/nginx
	sh scripts/ensure-program.sh chromium chromium chromium /usr/bin/chromium chromium-browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Regenerate the derived documentation and sample configuration.
docs: install
	$(BIN)/python tools/render_config.py --markdown > docs/configuration.md
	$(BIN)/python tools/render_config.py --sample-conf > conf/rtbus.conf

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
