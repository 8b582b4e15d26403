# Lockgate developer commands. `make run` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= conf/lockgate.yaml
PORT   ?= 8080

.PHONY: run test lint format bench check-config migration clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.run --write docs/benchmarks.md

check-config: $(STAMP)
	$(BIN)/lockgate check-config --config $(CONFIG)

# After changing gateway_core/store/models.py: write the SQLite and PostgreSQL migrations of the change.
migration: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make migration NAME=what_changed" >&2; exit 2; }
	$(BIN)/python -m gateway_core.store.migrate make $(NAME)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
