import json
from pathlib import Path

import pytest
from kombu import Connection

from core.embedded_broker import message_file_name
from core.queue import (
    GPU_QUEUE,
    TRAIN_JOB_TASK,
    broker_priority,
    broker_transport_options,
    enqueue_train_job,
    make_producer,
)
from core.settings import Settings
from tests.support.broker import received_task_args


def test_enqueue_puts_the_task_by_name_on_the_embedded_broker(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    settings.ensure_dirs()
    enqueue_train_job(make_producer(settings), "job_123")

    options = broker_transport_options(settings)
    with Connection(settings.broker_url, transport_options=options) as conn:
        message = conn.SimpleQueue(GPU_QUEUE).get(timeout=5)
        assert message.headers["task"] == TRAIN_JOB_TASK
        assert json.loads(message.body)[0] == ["job_123"]
        message.ack()


def test_a_job_is_enqueued_on_its_own_queue_with_its_priority(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    settings.ensure_dirs()
    enqueue_train_job(make_producer(settings), "job_h100", queue="mapo.gpu.h100", priority=7)

    options = broker_transport_options(settings)
    with Connection(settings.broker_url, transport_options=options) as conn:
        assert conn.SimpleQueue(GPU_QUEUE).qsize() == 0
        message = conn.SimpleQueue("mapo.gpu.h100").get(timeout=5)
        assert json.loads(message.body)[0] == ["job_h100"]
        # kombu's Redis transport serves the lowest number first: priority 7 travels as 2.
        assert message.properties["priority"] == 2
        message.ack()


def test_broker_priority_turns_the_scale_over_and_refuses_values_out_of_range() -> None:
    assert [broker_priority(p) for p in (0, 5, 9)] == [9, 4, 0]
    with pytest.raises(ValueError, match="priority"):
        broker_priority(10)


def test_redis_queues_get_one_priority_list_per_job_priority() -> None:
    options = broker_transport_options(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert options["priority_steps"] == list(range(10))


def test_message_file_names_sort_in_sending_order_when_the_clock_gains_a_digit() -> None:
    # kombu's own names ("999999_…", "1000000_…") sorted the later message first at such a boundary.
    sent = [999_999_999_999, 1_000_000_000_000, 9_999_999_999_999_999_999, 10_000_000_000_000_000_000]
    names = [message_file_name(GPU_QUEUE, sent_at_ns=ns, unique=f"m{ns % 7}") for ns in sent]
    assert sorted(names) == names
    assert all(name.partition(".")[2] == f"{GPU_QUEUE}.msg" for name in names), "kombu finds the queue"


def test_jobs_of_equal_priority_leave_the_embedded_queue_in_submission_order(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    settings.ensure_dirs()
    producer = make_producer(settings)
    submitted = [f"job_{n}" for n in range(12)]
    for job_id in submitted:
        enqueue_train_job(producer, job_id)

    files = sorted(p.name for p in settings.broker_dir.glob(f"*.{GPU_QUEUE}.msg"))
    assert len(files) == len(submitted)
    assert all(len(name.partition("_")[0]) == 20 for name in files), f"not the FIFO transport: {files}"
    assert [args[0] for args in received_task_args(settings)] == submitted
