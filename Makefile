# Two entry points: `make demo` runs the main job end to end, `make test` runs the suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

demo: $(STAMP)
	$(BIN)/python examples/demo.py --out demo-output

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_downscale.py

lint: $(STAMP)
	$(BIN)/ruff check geosr tests benchmarks

clean:
	rm -rf $(VENV) demo-output .pytest_cache
