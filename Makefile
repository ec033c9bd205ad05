# rtbus — the two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=
# The suite mostly waits on servers and PostgreSQL: two xdist workers, each with its own
# throwaway clusters, a whole test file per worker (module-scoped servers stay shared).
PYTEST_WORKERS ?= 2

.PHONY: install run test test-odoo docs bench clean

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
## nginx (with the Nchan module, for the --compare test) and headless Chromium, installed
## here with apt-get when missing and possible).
test: install
	sh scripts/ensure-program.sh nginx "nginx-light nginx" nginx /usr/sbin/nginx
	sh scripts/ensure-program.sh chromium chromium chromium /usr/bin/chromium chromium-browser
	sh scripts/ensure-program.sh "nginx's Nchan module (rtbus-bench --compare)" libnginx-mod-nchan \
		/usr/lib/nginx/modules/ngx_nchan_module.so
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## Regenerate the derived documentation and sample configuration.
docs: install
	$(BIN)/python tools/render_config.py --markdown > docs/configuration.md
	$(BIN)/python tools/render_config.py --sample-conf > conf/rtbus.conf

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

## Run rtbus against a real Odoo 19 (tests/odoo/): ODOO_SRC names an Odoo 19 source tree;
## its requirements go into a venv of their own ($(ODOO_VENV)). Without ODOO_SRC: an error.
ODOO_VENV ?= .odoo-venv
ODOO_PYTHON_VERSION ?= python3
test-odoo: install
	@test -n "$(ODOO_SRC)" || { echo "make test-odoo needs ODOO_SRC=<an Odoo 19 source tree>"; exit 2; }
	@test -f "$(ODOO_SRC)/odoo-bin" || { echo "$(ODOO_SRC) has no odoo-bin: not an Odoo tree"; exit 2; }
	test -x $(ODOO_VENV)/bin/python || $(ODOO_PYTHON_VERSION) -m venv $(ODOO_VENV)
	grep -v -i '^python-ldap\|^psycopg2' "$(ODOO_SRC)/requirements.txt" > $(ODOO_VENV)/requirements.txt
	echo psycopg2-binary >> $(ODOO_VENV)/requirements.txt
	$(ODOO_VENV)/bin/python -m pip install --quiet --prefer-binary -r $(ODOO_VENV)/requirements.txt
	RTBUS_TEST_ODOO_SRC="$(abspath $(ODOO_SRC))" RTBUS_TEST_ODOO_PYTHON="$(abspath $(ODOO_VENV))/bin/python" \
		$(BIN)/python -m pytest -p no:cacheprovider -rs tests/odoo $(PYTEST_ARGS)
