# The README's two commands are `make up` and `make test`.
PY := .venv/bin/python
STAMP := .local/installed.stamp

.PHONY: install up observe down status test test-unit compose-test lint bench proto proto-check proto-lint typecheck cfn cfn-check

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh

## Install everything, start DynamoDB Local, the four services and the HTTP gateway, print where they listen,
## write the dev tokens to .local/dev-auth.env, and load the sample catalog into an empty catalog.
up: install
	$(PY) -m devcluster up >/dev/null
	. .local/dev-auth.env && .venv/bin/rewardsctl catalog apply --if-empty catalog/sample-game.yaml
	@$(PY) -m devcluster status

## `make up`, then a local Prometheus (Debian's package, a plain process) on http://localhost:9090
## scraping the four services' metrics ports, with deploy/prometheus/alerts.yml loaded; data in
## .local/prometheus/, log in .local/logs/prometheus.log. Prints its URL; `make down` stops it too.
observe: up
	@$(PY) -m devcluster observe

down:
	$(PY) -m devcluster down

status:
	$(PY) -m devcluster status

## The test suite: starts its own DynamoDB Local and servers.
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

## The unit tier alone: use cases on in-memory fakes, rewardsctl's clients on scripted channels (seconds).
test-unit: install
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

## docker-compose.yml for real, under podman: builds the images (stand-in bases from Debian packages, the
## project's from the Dockerfile), starts every service, tests it through the published ports, then `down`.
## Installs podman when missing. Uses the ports of `make up`: stop that first. Not part of `make test`.
compose-test: install
	bash scripts/compose_test.sh $(PYTEST_ARGS)

## Throughput, latency, DynamoDB calls and service CPU per op through gRPC next to the floor (the fewest
## DynamoDB calls each operation needs, through the lean client; boto3 for reference),
## on a cluster of its own (free ports: runs beside `make up`); writes bench/results.json.
## Not part of the tests. BENCH_ARGS="--duration 3 --cases award_xp" for a shorter run; --help lists the flags.
bench: install
	$(PY) -m bench $(BENCH_ARGS)

## ruff: lint and format check (config in pyproject.toml); `ruff format .` formats.
lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

## Regenerate rewards/v1 (Python code and .pyi stubs) from protos/.
proto: install
	bash scripts/gen_protos.sh

## Fail when the committed generated code is not what protos/ generates.
proto-check: install
	@tmp=$$(mktemp -d) && bash scripts/gen_protos.sh $$tmp && \
	  diff -r -x __pycache__ $$tmp/rewards rewards && rm -rf $$tmp && echo "proto-check: generated code is fresh"

## The project's own packages and the example pass mypy (generated stubs included).
typecheck: install
	$(PY) -m mypy

## Regenerate every stage's AWS stack (deploy/stacks/<stage>.yaml) from the code (common/cloudformation/).
cfn: install
	$(PY) -m common.cloudformation --write

## Fail when the committed template is stale or cfn-lint finds anything.
cfn-check: install
	$(PY) -m common.cloudformation --check
	.venv/bin/cfn-lint --include-checks I -- deploy/stacks/*.yaml

## Lint protos/ with buf and check them for breaking changes against the previous commit.
proto-lint: install
	bash scripts/buf_check.sh
