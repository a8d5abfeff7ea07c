import json
from pathlib import Path

from kombu import Connection

from core.queue import GPU_QUEUE, TRAIN_JOB_TASK, broker_transport_options, enqueue_train_job, make_producer
from core.settings import Settings


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
