# quantviz: `make run` opens the app on the bundled sample; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501
ADDRESS ?= 127.0.0.1
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast browser bench lint samples clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-ray.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

run: install
	$(PY) -m streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT) \
		--browser.gatherUsageStats false --server.headless true

# Debian's Chromium for the real-browser tests (never `playwright install`: it downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium fonts-liberation; }

test: install browser
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not e2e and not slow"

bench: install
	$(PY) bench/bench_collect.py sample_models/digits_resnet.onnx sample_models/digits32_calib.npz

# ruff over every Python folder; mypy strict on the engine (mypy.ini), default checks on the app.
lint: install
	$(PY) -m ruff check quantviz ui pages tests bench app.py
	$(PY) -m mypy quantviz
	$(PY) -m mypy ui pages app.py

clean:
	rm -rf $(VENV) .pytest_cache
