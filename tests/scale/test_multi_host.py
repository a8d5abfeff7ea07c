"""Several hosts on one machine (network namespaces): an API host and two worker hosts sharing PostgreSQL,
Redis and the object store (SeaweedFS over S3). Jobs spread over both workers; a worker host cut off the
network in the middle of a job loses it to the other host, which resumes it from its last checkpoint in
the object store and finishes it. The cut host is left running: losing its link must be enough.

Prints the figures the team tracks: how the jobs spread, the time from the cut to the job running on
the other host, and the step it resumed from.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

import migrations
from client.sdk import JSON, MapoClient
from core.db import Database
from core.models import Job
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import tenants as tenant_repo
from core.repositories.pagination import MAX_LIMIT
from core.settings import Settings
from core.storage import job_key
from tests.support.factories import TEST_PEPPER
from tests.support.hosts import HostProcess, SharedStorage, s3_storage, service_env, start_api, start_worker
from tests.support.netns import Host, Network, require_netns
from tests.support.servers import PrivatePostgres, PrivateRedis
from tests.support.specs import FAST_TRAINING
from trainer.checkpoints import PREFIX
from trainer.synthetic.demo_data import write_demo_upload

SHORT_JOBS = 4
# Long enough that the cut lands well before the end even when the first checkpoint shows late (a loaded
# CI machine once saw it only after all 60 steps of an earlier, shorter job had run).
LONG_JOB_STEPS, CHECKPOINT_EVERY = 240, 20
WAIT_S = 600


@dataclass
class Cluster:
    api_url: str
    key: str
    database: Database
    workers: dict[str, HostProcess]  # by Celery node name
    data_dirs: dict[str, Path]  # each worker host's own MAPO_DATA_DIR, by Celery node name
    processes: list[HostProcess]

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes)


@pytest.fixture
def network() -> Iterator[Network]:
    require_netns()
    net = Network().start()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def cluster(network: Network, tmp_path: Path, tiny_sd: Path) -> Iterator[Cluster]:
    # A host cut mid-transaction leaves its row locks with the server until the session is ended.
    postgres = PrivatePostgres(address=network.gateway, options=("idle_in_transaction_session_timeout=5s",))
    redis = PrivateRedis(tmp_path / "redis", address=network.gateway)
    processes: list[HostProcess] = []
    try:
        with s3_storage(network, tmp_path) as storage:
            try:
                yield _start_cluster(network, tmp_path, tiny_sd, postgres, redis, storage, processes)
            finally:
                _stop_all(processes, network.hosts)
    finally:
        redis.close()
        postgres.close()


def _stop_all(processes: list[HostProcess], hosts: list[Host]) -> None:
    """Stop every service, then make sure no process is left on any host: a cut host's worker is still
    running, and one that outlived the test would hold files and ports (and its job, were the link back)."""
    for process in processes:
        # A cut host's warm shutdown could only wait on its dead link to hand its job back: kill it now.
        process.stop(timeout=0 if process.host.is_cut else 15)
    deadline = time.monotonic() + 10
    while any(host.pids() for host in hosts) and time.monotonic() < deadline:
        time.sleep(0.2)  # killed children are still being reaped
    left = {host.namespace: host.pids() for host in hosts if host.pids()}
    for pid in [pid for pids in left.values() for pid in pids]:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running on the test's hosts: {left}"


def _start_cluster(
    network: Network,
    root: Path,
    tiny_sd: Path,
    postgres: PrivatePostgres,
    redis: PrivateRedis,
    storage: SharedStorage,
    processes: list[HostProcess],
) -> Cluster:
    migrations.upgrade(postgres.url)
    database = Database(Settings(database_url=postgres.url))
    with database.session_scope() as session:
        tenant = tenant_repo.create_tenant(session, "scale")
        _, key = tenant_repo.create_api_key(session, tenant_id=tenant.id, pepper=TEST_PEPPER)
    logs = root / "logs"
    logs.mkdir()

    def env(host: str) -> dict[str, str]:
        return service_env(
            database_url=postgres.url,
            broker_url=redis.url,
            storage=storage,
            base_models={"tiny-sd": str(tiny_sd)},
            data_dir=root / host,
        )

    api_host = network.add_host("api")
    api, api_url = start_api(api_host, env("api"), logs)
    processes.append(api)
    workers: dict[str, HostProcess] = {}
    data_dirs: dict[str, Path] = {}
    for name in ("w1", "w2"):
        node = f"{name}-{network.tag}@scale"
        workers[node] = start_worker(network.add_host(name), node, env(name), logs)
        data_dirs[node] = root / name
        processes.append(workers[node])
    return Cluster(api_url, key, database, workers, data_dirs, processes)


def _wait(what: str, probe: Callable[[], bool], cluster: Cluster, *, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s\n{cluster.logs()}")


def _job(cluster: Cluster, job_id: str) -> Job:
    with cluster.database.session_scope() as session:
        job = job_repo.get_job_any_tenant(session, job_id)
    assert job is not None
    return job


def _node_of(job: Job) -> str | None:
    # A job row names its worker as "<celery node name>:<pool child pid>".
    return job.worker_id.rsplit(":", 1)[0] if job.worker_id else None


def _submit(mapo: MapoClient, dataset_id: str, **hyperparameters: Any) -> JSON:
    return mapo.create_job(
        dataset_id=dataset_id,
        base_model="tiny-sd",
        hyperparameters={**FAST_TRAINING, **hyperparameters},
        validation={"prompts": []},
    )


def _events(session: Session, job_id: str) -> list[Any]:
    """Every event of the job, page by page (a page holds at most MAX_LIMIT)."""
    events: list[Any] = []
    while True:
        after = events[-1].seq if events else None
        page = event_repo.list_events(session, job_id, after=after, limit=MAX_LIMIT)
        events += page.items
        if not page.has_more:
            return events


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_jobs_spread_over_two_hosts_and_a_cut_host_s_job_resumes_on_the_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    mapo = MapoClient(cluster.api_url, cluster.key)
    _wait("both workers online", lambda: len(mapo.list_workers(status="online")) == 2, cluster)
    upload = write_demo_upload(tmp_path / "pairs.zip", kind="zip", num_pairs=6, resolution=32)
    dataset_id = mapo.upload_dataset(upload, name="scale")["id"]

    # Several jobs at once: each idle worker takes one, and the rest go to whichever is free first.
    short = [_submit(mapo, dataset_id)["id"] for _ in range(SHORT_JOBS)]
    _wait("short jobs finished", lambda: all(_job(cluster, j).is_finished for j in short), cluster)
    ran_on = {job_id: _node_of(_job(cluster, job_id)) for job_id in short}
    assert all(_job(cluster, j).status == "succeeded" for j in short), cluster.logs()
    spread = {node: list(ran_on.values()).count(node) for node in cluster.workers}
    print(f"\n{SHORT_JOBS} jobs spread over the worker hosts: {spread}")
    assert all(count >= 1 for count in spread.values()), spread

    # A long job; once it has a checkpoint, its host drops off the network.
    long_id = _submit(
        mapo, dataset_id, max_train_steps=LONG_JOB_STEPS, checkpoint_every_n_steps=CHECKPOINT_EVERY
    )["id"]
    _wait("first checkpoint", lambda: bool(mapo.checkpoints(long_id)), cluster)
    victim_node = _node_of(_job(cluster, long_id))
    assert victim_node in cluster.workers
    (survivor_node,) = set(cluster.workers) - {victim_node}
    victim = cluster.workers[victim_node]
    checkpointed = max(c["step"] for c in mapo.checkpoints(long_id))
    # The other host's own disk holds nothing of this job: what it resumes from must come from the store.
    assert not _local_files_of(long_id, cluster.data_dirs[survivor_node])
    cut_at = time.monotonic()
    victim.host.cut()
    assert not _job(cluster, long_id).is_finished, "the long job ended before its host was cut"

    def running_elsewhere() -> bool:
        job = _job(cluster, long_id)
        return job.status == "running" and _node_of(job) == survivor_node and job.attempts == 2

    _wait("the job running on the other host", running_elsewhere, cluster)
    moved_s = time.monotonic() - cut_at
    print(f"cut {victim_node} at step {checkpointed}+; running on {survivor_node} {moved_s:.1f} s later")
    _wait("the cut worker shown offline", lambda: victim_node in _ids(mapo, "offline"), cluster)

    _wait("the long job finished", lambda: _job(cluster, long_id).is_finished, cluster)
    finished = _job(cluster, long_id)
    assert finished.status == "succeeded", cluster.logs()
    assert (finished.step, finished.attempts) == (LONG_JOB_STEPS, 2)
    with cluster.database.session_scope() as session:
        events = _events(session, long_id)
    types = [e.type for e in events]
    assert types.count("requeued") == 1 and types.count("succeeded") == 1, types
    resumed = [e.data["resumed_from_step"] for e in events if e.type == "started"]
    assert resumed[0] == 0 and resumed[1] >= checkpointed > 0, resumed
    survivor_log = cluster.workers[survivor_node].log.read_text(errors="replace")
    restored = f"restored checkpoint {PREFIX}{resumed[1]:06d} of {_key_of(finished)} from storage"
    assert restored in survivor_log, survivor_log[-3000:]
    print(f"resumed from the checkpoint of step {resumed[1]} (seen before the cut: step {checkpointed})")
    # Not frozen, only cut off: the cut host is still running, yet nothing it did reached the job.
    assert victim.process.poll() is None, victim.tail()


def _local_files_of(job_id: str, data_dir: Path) -> list[Path]:
    return [path for path in data_dir.rglob("*") if job_id in path.parts]


def _key_of(job: Job) -> str:
    return job_key(job.tenant_id, job.id)


def _ids(mapo: MapoClient, status: str) -> set[str]:
    return {w["id"] for w in mapo.list_workers(status=status)}
