# The README's two commands are `make demo` and `make test`; each first runs
# scripts/setup.sh, which installs what a fresh machine lacks.
PY := .venv/bin/python

.PHONY: setup demo test lint rpm bench fuzz crash flood clean

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

# The long reliability runs (docs/reliability.md); the tests run short ones.
fuzz: setup
	$(PY) -m reliability fuzz --examples 100000

crash: setup
	$(PY) -m reliability crash --cycles 1000

flood: setup
	$(PY) -m reliability flood --seconds 20

clean:
	rm -rf dist build .pytest_cache .ruff_cache
