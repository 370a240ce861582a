# vmkeep — the two set-up commands on a fresh Debian machine (as root): `make demo`, `make test`.
SHELL := /bin/bash
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
UV_RUN := uv run --frozen

.PHONY: deps demo test test-fast lint format docs bench bench-files

deps:  ## Debian packages, uv and the locked Python environment
	@.ci/install-deps

demo: deps  ## the main job on embedded defaults (local repository, Prefect's local server, the ESX lab)
	$(UV_RUN) python -m vmkeep.deployments.demo

test: deps  ## the whole test suite (lab, servers and all)
	$(UV_RUN) pytest

test-fast: deps  ## unit tests only: no lab, no servers
	$(UV_RUN) pytest -m "not lab and not slow"

lint: deps  ## ruff, mypy and the layer contracts
	$(UV_RUN) ruff check .
	$(UV_RUN) mypy vmkeep
	$(UV_RUN) lint-imports

format:
	$(UV_RUN) ruff format .

docs:  ## regenerate docs/cli.md's verb reference and docs/format.md's worked example
	$(UV_RUN) python -m vmkeep.cli.gendoc
	$(UV_RUN) python docs/examples/make_format_examples.py --write

bench: deps  ## image backup benchmark against restic and borg (see docs/performance.md)
	$(UV_RUN) python bench/bench_image.py

bench-files: deps
	$(UV_RUN) python bench/bench_files.py

.PHONY: serve
serve: deps  ## scheduled jobs: Prefect server, work pools, deployments, a local data mover (README)
	$(UV_RUN) vmkeep serve $(SERVE_ARGS)
