# Fleetcast: the two commands are `make demo` and `make test`; everything they need
# is set up here, on a fresh Debian/Ubuntu machine with Python 3.11.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test venv proto broker bench clean

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

test: venv broker
	$(PY) -m pytest -q

demo: venv
	$(PY) examples/demo.py

proto: venv
	$(PY) proto/generate.py

# The benchmarks that need neither torch nor hours: delivery, inference overhead and
# every compression level on the digits model. docs/benchmarks.md has the others.
bench: venv broker
	$(PY) benchmarks/delivery_bench.py rollout --agents 20 --megabytes 5 --repeat 5 --trial-s 1
	$(PY) benchmarks/delivery_bench.py swap --swaps 10 --threads 2
	$(PY) benchmarks/infer_overhead.py --threads 1 --rounds 15
	$(PY) benchmarks/compress_bench.py --nets digits

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
