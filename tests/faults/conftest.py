"""Fault-injection tests reuse the worker tests' fixtures (a real tiny model, real datasets and jobs)."""

from tests.worker.conftest import ctx, make_job, redis_broker, worker_settings

__all__ = ["ctx", "make_job", "redis_broker", "worker_settings"]
