"""What waits on the broker's queues."""

from __future__ import annotations

import json
from typing import Any

from kombu import Connection

from core.queue import GPU_QUEUE, TRAIN_JOB_TASK, broker_transport_options
from core.settings import Settings


def received_task_args(settings: Settings, queue_name: str = GPU_QUEUE) -> list[Any]:
    """Every train task waiting on `queue_name` of the real embedded broker, by its args."""
    found: list[Any] = []
    with Connection(settings.broker_url, transport_options=broker_transport_options(settings)) as conn:
        queue = conn.SimpleQueue(queue_name)
        while True:
            try:
                message = queue.get(timeout=0.2)
            except queue.Empty:
                return found
            assert message.headers["task"] == TRAIN_JOB_TASK
            found.append(json.loads(message.body)[0])
            message.ack()
