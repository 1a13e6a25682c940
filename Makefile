# Two commands do all the set-up: `make run` (the app on bundled RetinaMNIST) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: run dev test install bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m streamlit run streamlit_app.py --server.port $(PORT)

# While editing pages: reload on save (watches the files; not for a shared server).
dev: install
	$(PY) -m streamlit run streamlit_app.py --server.port $(PORT) --server.fileWatcherType auto --server.runOnSave true

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/quality.py

clean:
	rm -rf $(VENV) .pytest_cache
