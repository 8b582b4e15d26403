# Lockgate developer commands. `make run` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= conf/lockgate.yaml
PORT   ?= 8080
# Exact versions with hashes, written from pyproject.toml by `make lock`: the runtime alone (containers,
# production) and the runtime with the `dev` extra (what `make run`, `make test` and CI install).
LOCK     := requirements.lock
DEV_LOCK := requirements-dev.lock

.PHONY: run test lint format bench bench-dlp check-config migration lock lock-upgrade clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'pip==26.3'

# A changed lock file (or pyproject.toml, for the entry points) reinstalls.
$(STAMP): $(BIN)/python $(DEV_LOCK) pyproject.toml
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

var/dev-key: | $(STAMP)
	@mkdir -p var
	@umask 077 && $(BIN)/lockgate keys generate --quiet > var/dev-key

# Signs the admin API's tokens in the embedded setup.
var/jwt-secret: | $(STAMP)
	@mkdir -p var
	@umask 077 && $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(48))" > var/jwt-secret

run: $(STAMP) var/dev-key var/jwt-secret
	@mkdir -p var
	@$(BIN)/lockgate db upgrade --config $(CONFIG)
	@echo ""
	@echo "  Lockgate on http://127.0.0.1:$(PORT) with $(CONFIG)"
	@echo "  API key: $$(cat var/dev-key)"
	@echo "  Try:     curl http://127.0.0.1:$(PORT)/v1/chat/completions \\"
	@echo "             -H \"Authorization: Bearer $$(cat var/dev-key)\" -H 'Content-Type: application/json' \\"
	@echo "             -d '{\"model\": \"mock\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'"
	@echo "  Admin:   http://127.0.0.1:$(PORT)/admin/docs (first admin: $(BIN)/lockgate users create-admin --email you@example.com)"
	@echo ""
	$(BIN)/lockgate serve --config $(CONFIG) --port $(PORT)

# The distributed-mode tests use these services for real; an unreachable one fails the run.
export LOCKGATE_TEST_POSTGRES_DSN ?= postgres://postgres@127.0.0.1:5432/test
export LOCKGATE_TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

# pytest's exit code 5 (no test collected) means a broken suite, not a passing one.
test: $(STAMP)
	@status=0; $(BIN)/python -m pytest -q || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no test: the suite is broken" >&2; exit 1; fi; \
	exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.run --write docs/benchmarks.md

# Precision, recall and cost of the pii_patterns DLP filter on its labelled corpus, and what it adds to
# a request through a gateway (about 20 s).
bench-dlp: $(STAMP)
	$(BIN)/python -m tests.benchmarks.dlp --end-to-end --write docs/dlp-accuracy.md

check-config: $(STAMP)
	$(BIN)/lockgate check-config --config $(CONFIG)

# After changing gateway_core/store/models.py: write the SQLite and PostgreSQL migrations of the change.
migration: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make migration NAME=what_changed" >&2; exit 2; }
	$(BIN)/python -m gateway_core.store.migrate make $(NAME)

# Both lock files from pyproject.toml, for every platform and Python 3.11 on. `make lock` keeps the
# versions already locked wherever pyproject.toml still allows them (run it after editing its
# dependencies); `make lock-upgrade` moves every package to the newest release allowed.
LOCK_COMPILE := $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command 'make lock'

lock: $(STAMP)
	$(LOCK_COMPILE) $(UPGRADE) --extra dev -o $(DEV_LOCK)
	$(LOCK_COMPILE) -c $(DEV_LOCK) -o $(LOCK)

lock-upgrade:
	$(MAKE) lock UPGRADE=--upgrade

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
