# jobstack: `make` alone lists the verbs.
.DEFAULT_GOAL := help
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help
help: ## list the verbs
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

.PHONY: test
test: services ## run every test: workspace tests against RabbitMQ + PostgreSQL, then the OpenAPI, stack and Kubernetes checks
	$(CARGO) nextest run --workspace --no-fail-fast
	$(MAKE) openapi-check
	$(MAKE) console-check
	$(MAKE) stack-check
	$(MAKE) k8s-check
	$(MAKE) release-check

.PHONY: openapi-check
openapi-check: services ## api/openapi.json valid OpenAPI 3.1; a generated client drives every operation; a short schemathesis run
	bash tests/openapi/run.sh

.PHONY: console-check
console-check: services ## the operator console in a real headless Chromium (Debian's chromium + playwright-core); SCREENSHOTS_DIR=docs/console refreshes the README's pictures
	bash tests/console/run.sh

.PHONY: mutants
mutants: services ## mutation testing of the core modules, score per module (MODULES="lifecycle relay" for some; slow, not in CI)
	bash tools/mutants.sh

.PHONY: fuzz
fuzz: services ## schemathesis with every check against a local api + worker (FUZZ_CASES per operation, FUZZ_SEED to replay)
	bash tests/openapi/run.sh fuzz

.PHONY: services
services: ## make sure the tests' PostgreSQL and RabbitMQ answer (starts the compose ones if Docker is there)
	@bash tests/services.sh

.PHONY: stack-check
stack-check: ## validate compose, Prometheus rules, dashboards and log regex against real services
	bash tests/stack/run.sh

.PHONY: smoke
smoke: ## check a running `docker compose up` end to end: health, targets, datasources, one job's trace and logs, dashboards
	python3 tests/stack/smoke.py

.PHONY: new-kind
new-kind: ## add a job kind: make new-kind NAME=resize (contract + handler + registration + tests)
	bash tools/new-kind.sh "$(NAME)"

.PHONY: fork-check
fork-check: ## prove the fork path: cargo generate acme-jobs full and lean (no bench, no loadgen), test both; make new-kind and test
	bash tests/fork.sh

.PHONY: contract
contract: ## regenerate the committed contract files: api/openapi.json and jobs-contract/schemas/*.schema.json
	$(CARGO) run -q -p api --example openapi > api/openapi.json
	rm -f jobs-contract/schemas/*.schema.json
	$(CARGO) run -q -p jobs-contract --example schemas -- jobs-contract/schemas

.PHONY: lint
lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: fmt
fmt: ## format the code
	$(CARGO) fmt --all

.PHONY: api-key
api-key: ## make an API key in the api's database and print its secret once (NAME=ops ROLE=admin [LIFETIME=90d])
	@$(CARGO) run -q -p api -- create-key "$(or $(NAME),admin)" "$(or $(ROLE),admin)" $(LIFETIME)

.PHONY: run-api
run-api: ## run the api against local RabbitMQ and PostgreSQL (LOG_FORMAT=pretty)
	LOG_FORMAT=$${LOG_FORMAT:-pretty} $(CARGO) run -p api

.PHONY: run-worker
run-worker: ## run a worker against local RabbitMQ (LOG_FORMAT=pretty)
	LOG_FORMAT=$${LOG_FORMAT:-pretty} $(CARGO) run -p worker

.PHONY: up
up: ## start the whole demo stack (docker compose)
	docker compose up -d --build

.PHONY: down
down: ## stop the demo stack and delete its volumes
	docker compose down -v

.PHONY: demo-story
demo-story: ## a scripted ten-minute story on the running demo: steady load, failures, slow paths, broker outage, recovery (Grafana annotations mark each phase)
	bash tools/demo-story.sh

.PHONY: load
load: ## drive a running api (default http://127.0.0.1:8080) with a steady job mix
	$(CARGO) run --release -p loadgen -- --scenario steady

.PHONY: bench
bench: ## measure throughput, latency, CPU and RSS against this machine's limits; writes BENCHMARKS.md
	$(CARGO) build --release --quiet -p api -p worker -p loadgen -p bench
	$(CARGO) run --release --quiet -p bench

.PHONY: k8s-rules
k8s-rules: ## rewrite deploy/k8s's PrometheusRule from observability/prometheus/rules (make k8s-check fails while it is stale)
	python3 tools/k8s_rules.py

.PHONY: release-check
release-check: ## lint the release workflow (actionlint) and hold it to what a release must do, each rule broken on purpose
	bash tests/release/run.sh

.PHONY: k8s-check
k8s-check: ## render deploy/k8s (kustomize), validate it against Kubernetes 1.35 and the operators' CRDs, enforce its policies
	python3 tests/k8s/check.py
