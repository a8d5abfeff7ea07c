# The two commands a newcomer needs (see README.md), plus the checks we run before every commit.
.PHONY: setup run test lint typecheck check bench base-models

setup:
	./scripts/setup.sh

# The embedded service: SQLite, local storage and the filesystem broker under ./mapo-data.
run: setup
	.venv/bin/mapo serve

# The whole suite. PostgreSQL/Redis tests use the servers MAPO_TEST_POSTGRES_URL / MAPO_TEST_REDIS_URL point
# at (.ci/run sets both), and otherwise throwaway ones that the session starts (tests/support/session_servers.py).
test: setup
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck:
	.venv/bin/mypy

check: lint typecheck test

bench:
	.venv/bin/python -m bench.trainer_step

# Re-make the shipped pre-trained tiny models (trainer/synthetic/base_models/; a few CPU minutes each).
base-models: setup
	.venv/bin/python -m trainer pretrain-tiny --family sd --half --denoiser-steps 3000 --out trainer/synthetic/base_models/shapes-sd
	.venv/bin/python -m trainer pretrain-tiny --family sdxl --half --out trainer/synthetic/base_models/shapes-sdxl
	.venv/bin/python -m trainer pretrain-tiny --family flux --half --denoiser-steps 2000 --out trainer/synthetic/base_models/shapes-flux
