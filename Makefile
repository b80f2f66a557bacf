# The two set-up commands of the README: `make serve` and `make test`. Everything else is a helper.
VENV ?= .venv
PY := $(VENV)/bin/python
RARE := $(VENV)/bin/rare
BEIR ?= ../shared/data/beir

.PHONY: install serve test lint format bench-index bench-service bench-encode-pool bench-dtype bench-packed bench-load bench-gc eval-headline compose-config clean

install: $(VENV)/.installed

# torch first, pinned: a looser spec would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Index the bundled sample once (collection "default"), then serve on 127.0.0.1:8000.
serve: install
	@test -f $${RARE_DATA_DIR:-var}/collections/default/CURRENT || \
		$(RARE) index --beir sample/tiny --collection default --quiet
	$(RARE) serve

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench-index: install
	$(PY) bench/index.py --beir $(BEIR)/scifact --beir $(BEIR)/nfcorpus

bench-service: install
	$(PY) bench/service.py --beir $(BEIR)/scifact

bench-encode-pool: install
	$(PY) bench/encode_pool.py --beir $(BEIR)/scifact

bench-dtype: install
	$(PY) bench/dtype.py --beir $(BEIR)/scifact

bench-packed: install
	$(PY) bench/packed.py --beir $(BEIR)/scifact

bench-load: install
	$(PY) bench/load.py

bench-gc: install
	$(PY) bench/gc_pause.py --beir $(BEIR)/scifact

eval-headline: install
	$(RARE) eval --beir $(BEIR)/scifact --beir $(BEIR)/nfcorpus --runs plain,rare --dtype float32

compose-config:
	docker compose -f docker/compose.yml config --quiet
	docker compose -f docker/compose.yml -f docker/compose.gpu.yml config --quiet

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
