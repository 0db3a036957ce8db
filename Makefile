# Influence Explorer: one command for the demo, one for the tests.
#   make demo   install, build the digits sample cache if missing, open the explorer
#   make test   install, run the test suite
# Override TORCH_SPEC for a CUDA build, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
CACHE_DIR  ?= cache
SAMPLE     ?= digits
PORT       ?= 8501
# 127.0.0.1: this machine only (the app has no authentication; see README "Security model")
ADDRESS    ?= 127.0.0.1

BIN := $(VENV)/bin
PY  := $(BIN)/python
STAMP := $(VENV)/.installed

.PHONY: install demo precompute app test test-deps lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

precompute: install
	@if [ -f "$(CACHE_DIR)/$(SAMPLE)/manifest.json" ]; then \
		echo "cache $(CACHE_DIR)/$(SAMPLE) is present; skipping precompute"; \
	else \
		$(BIN)/influence-explorer precompute --sample $(SAMPLE) --cache-dir $(CACHE_DIR); \
	fi

app: install
	$(BIN)/influence-explorer app --cache-dir $(CACHE_DIR) --port $(PORT) --address $(ADDRESS)

demo: precompute app

# The browser tests drive Debian's chromium (never a downloaded browser): install it when missing.
test-deps:
	@if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian chromium for the browser tests (apt-get)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		echo "installing Debian chromium for the browser tests (sudo apt-get)"; \
		sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "error: the browser tests need Debian's chromium (/usr/bin/chromium); install it with" \
		     "'sudo apt-get install -y chromium' and rerun make test" >&2; exit 1; \
	fi

test: install test-deps
	$(PY) -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(CACHE_DIR) .pytest_cache
