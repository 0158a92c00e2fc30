# Fleetcast: the two commands are `make demo` and `make test`; everything they need
# is set up here, on a fresh Debian/Ubuntu machine with Python 3.11.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-h5 test venv proto broker browser bench bench-bridge clean rknn-env

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Mosquitto from the OS packages when it is missing; the tests start their own
# instance on a free port with deploy/mosquitto/fleetcast.conf.
broker:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto from the OS packages"; \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }

# Debian's Chromium for the H5 browser tests (Playwright drives it; it never downloads a
# browser of its own) and Node.js for the JS package's tests, when they are missing.
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v node >/dev/null 2>&1; } || { \
	  echo "installing chromium and nodejs from the OS packages"; \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium nodejs >/dev/null; }

# PostgreSQL for the store contract suite: the server on 127.0.0.1:5432 when it answers,
# else a private cluster for the run, stopped after it (tests/support/pg_cluster.sh).
test: venv broker browser
	node --test sdk/js/test/
	tests/support/pg_cluster.sh ensure
	$(PY) -m pytest -q; rc=$$?; tests/support/pg_cluster.sh stop; exit $$rc

demo: venv
	$(PY) examples/demo.py

# rknn-toolkit2 (ONNX -> RKNN and its simulator) in its own environment: its pins
# (numpy<=1.26.4, protobuf<=4.25.4, torch<=2.4) clash with the server's. Optional;
# the server uses it when FLEETCAST_RKNN_PYTHON=.venv-rknn/bin/python, and the RKNN
# test runs when .venv-rknn exists. torch is only imported by the toolkit, never used
# for ONNX: the CPU build 2.13.0 stands in for its torch<=2.4 pin, which on PyPI would
# pull gigabytes of CUDA libraries, so the toolkit goes in without its declared deps.
RKNN_VENV := .venv-rknn
rknn-env: $(RKNN_VENV)/.installed-stamp

$(RKNN_VENV)/.installed-stamp:
	$(PYTHON) -m venv $(RKNN_VENV)
	$(RKNN_VENV)/bin/python -m pip install --quiet --no-deps rknn-toolkit2==2.5.0 torch==2.13.0
	$(RKNN_VENV)/bin/python -m pip install --quiet 'protobuf>=4.21.6,<=4.25.4' 'numpy<=1.26.4' \
	  'onnx>=1.16.1,<=1.18.0' onnxruntime psutil 'ruamel.yaml' scipy tqdm opencv-python-headless fast-histogram
	touch $@


# The H5 digits page calling the on-device model through the agent's bridge.
demo-h5: venv
	$(PY) examples/h5/demo.py

proto: venv
	$(PY) proto/generate.py

# The benchmarks that need neither torch nor hours: delivery, inference overhead and
# every compression level on the digits model. docs/benchmarks.md has the others.
bench: venv broker
	$(PY) benchmarks/delivery_bench.py rollout --agents 20 --megabytes 5 --repeat 5 --trial-s 1
	$(PY) benchmarks/delivery_bench.py swap --swaps 10 --threads 2
	$(PY) benchmarks/infer_overhead.py --threads 1 --rounds 15
	$(PY) benchmarks/compress_bench.py --nets digits

# Bridge call latency beside the in-process and Unix-socket calls (docs/benchmarks.md).
bench-bridge: venv browser
	$(PY) benchmarks/bridge_bench.py --rounds 7 --calls 50


# Coverage-guided fuzzing (atheris) of every parser that takes bytes from the network or
# the disk, FUZZ_SECONDS per harness (fuzz/__init__.py lists them; results in build/fuzz/),
# then schemathesis against the OpenAPI document of a real server on loopback.
# Neither is part of `make test`, which replays the seeds and past crashes instead.
.PHONY: fuzz schemathesis fuzz-venv
FUZZ_SECONDS ?= 60
SCHEMATHESIS_EXAMPLES ?= 25
FUZZ_STAMP := $(VENV)/.fuzz-stamp

$(FUZZ_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,fuzz]'
	touch $(FUZZ_STAMP)

fuzz-venv: $(FUZZ_STAMP)

fuzz: fuzz-venv
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS) fcpack manifest state telemetry mqtt upload
	$(PY) -m fuzz.api --examples $(SCHEMATHESIS_EXAMPLES)

schemathesis: fuzz-venv
	$(PY) -m fuzz.api --examples $(SCHEMATHESIS_EXAMPLES)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
