# The README's two commands are `make demo` and `make test`; each first runs
# scripts/setup.sh, which installs what a fresh machine lacks.
PY := .venv/bin/python

.PHONY: setup demo test lint rpm bench fuzz clean

setup:
	@scripts/setup.sh

demo: setup
	$(PY) -m nexusd.demo

test: setup lint
	$(PY) -m pytest -q

lint: setup
	@scripts/check.sh

rpm: setup
	@scripts/build-rpm.sh

bench: setup
	$(PY) -m bench

clean:
	rm -rf dist build .pytest_cache .ruff_cache
