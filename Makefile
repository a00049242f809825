VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast reliability lint bench clean

$(STAMP): pyproject.toml client/pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev]' -e './client[numpy]'
	touch $(STAMP)

install: $(STAMP)

# localstripe, the fake Stripe server the billing tests run, in its own venv: its pins clash
# with ours.
LOCALSTRIPE := .venv-localstripe/.installed
$(LOCALSTRIPE):
	python3 -m venv .venv-localstripe
	.venv-localstripe/bin/pip install --quiet localstripe==1.15.10
	touch $(LOCALSTRIPE)

## Install, migrate, seed the demo and start web + worker + beat (Ctrl-C stops all).
run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	$(PY) manage.py seed_demo_model
	$(PY) -m config.devserver

## The whole suite; it starts the Redis, Celery worker and browser it needs itself.
test: install $(LOCALSTRIPE)
	$(PY) -m pytest

test-fast: install $(LOCALSTRIPE)
	$(PY) -m pytest -m "not e2e and not browser and not reliability"

## Faults, load and abuse against the real stack; writes docs/reliability.md (CI writes
## MM_RELIABILITY_REPORT=var/reliability.md instead).
## MM_RELIABILITY_SIZE=small (CI, about 10 min) or full (the default here, longer load).
MM_RELIABILITY_SIZE ?= full
MM_RELIABILITY_REPORT ?= docs/reliability.md
reliability: install $(LOCALSTRIPE)
	MM_RELIABILITY_SIZE=$(MM_RELIABILITY_SIZE) MM_RELIABILITY_REPORT=$(MM_RELIABILITY_REPORT) \
		$(PY) -m pytest tests/reliability -m reliability -p no:cacheprovider -v

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	for b in auth vault upload runtime inference compression; do $(PY) bench/$$b.py --quick || exit 1; done

clean:
	rm -rf var/test-db.sqlite3* .pytest_cache
