# StylusDocs toolkit. `make build` and `make test` are all a fresh clone needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= data/out
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup build stylus-sample nightly query test bench eval-retrieval eval-compose lint clean
.PHONY: portable-sample

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch/torchvision: a matching pair (PyPI's torchvision does not import beside a CPU-only torch 2.13).
	$(PY) -m pip install -q -e '.[ml,query,dev]' 'torch>=2.4' 'torchvision>=0.19'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the package with every extra the tests need

build: setup ## the main job: crawl the bundled sample through the replay server, build a release, query it, report it
	$(PY) scripts/build_sample.py --out $(OUT)
	$(VENV)/bin/stylus-docs report --docs $(OUT)/docs --out $(OUT)/report.html

stylus-sample: setup ## the whole Stylus build on the sample on CPU: render (tiny model) -> VLM refine (loopback) -> embed
	$(PY) scripts/build_stylus_sample.py --out $(OUT)/stylus

nightly: setup ## three scheduled `stylus-docs rebuild` runs on the sample: full, delta (a mutated next day), no-op
	$(PY) scripts/nightly_sample.py --out $(OUT)/nightly

portable-sample: setup ## the sample crawl + build through a loopback Beam job service + 2-worker SDK pool, vs in-process
	$(PY) scripts/portable_sample.py --out $(OUT)/portable

query: setup ## example query against the sample release built by `make build`
	$(VENV)/bin/stylus-docs query "a graffiti of a corgi on the wall" --docs $(OUT)/docs -k 10

test: setup ## run the test suite (fails if no test ran)
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: build ## run the CPU benchmarks (crawl, build, query, compose) and update BENCHMARKS.md
	$(PY) scripts/bench_crawl.py
	$(PY) scripts/bench_delta.py
	$(PY) scripts/bench_build.py
	$(PY) scripts/bench_query.py
	$(PY) scripts/bench_compose.py

eval-retrieval: setup ## retrieval quality on the developer half of the real data (../shared/data)
	$(PY) scripts/eval_retrieval.py

eval-compose: setup ## composer rules + agreement with Stylus on developer-half captions (../shared/data)
	$(PY) scripts/eval_compose.py --grid

lint: setup ## ruff
	$(VENV)/bin/ruff check stylus_docs pipelines scripts tests

clean: ## remove build outputs (keeps .venv)
	rm -rf $(OUT) .pytest_cache
