"""The filter `mapo serve` relays its children's output through, on lines as they write them."""

from __future__ import annotations

from ops.terminal import LineFilter, threshold

CHILD_OUTPUT = """\
/venv/celery/platforms.py:893: SecurityWarning: You are running the worker with superuser privileges
absolutely not recommended!
[2026-12-02 17:43:52,572: WARNING/MainProcess] No hostname was supplied. Reverting to default 'localhost'
 -------------- [queues]
[2026-12-02 17:43:52,671: INFO/MainProcess] Connected to filesystem://:**@localhost//
INFO: [uvicorn.access] 127.0.0.1:47140 - "GET /v1/jobs HTTP/1.1" 200
[2026-12-02 17:45:00,844: ERROR/ForkPoolWorker-1] job job_1 crashed
Traceback (most recent call last):
RuntimeError: operator torchvision::nms does not exist
INFO: [uvicorn.error] Application startup complete.
ERROR: [api.errors] unhandled error
"""


def kept(log_level: str, output: str = CHILD_OUTPUT) -> list[str]:
    lines = LineFilter(threshold(log_level))
    return [line for line in output.splitlines() if lines.keep(line)]


def test_the_default_keeps_errors_with_their_tracebacks_and_nothing_else() -> None:
    assert kept("error") == [
        "[2026-12-02 17:45:00,844: ERROR/ForkPoolWorker-1] job job_1 crashed",
        "Traceback (most recent call last):",
        "RuntimeError: operator torchvision::nms does not exist",
        "ERROR: [api.errors] unhandled error",
    ]


def test_warning_adds_warnings_and_info_adds_each_request() -> None:
    warnings = kept("warning")
    assert "absolutely not recommended!" in warnings and not any("GET /v1/jobs" in w for w in warnings)
    assert " -------------- [queues]" in warnings  # continues the WARNING record before it
    assert any("GET /v1/jobs" in line for line in kept("info"))
    assert kept("debug") == CHILD_OUTPUT.splitlines()


def test_what_a_child_prints_before_its_first_record_is_shown_as_an_error() -> None:
    usage = "Usage: celery [OPTIONS] COMMAND [ARGS]...\nError: No such option: --quiet\n"
    assert kept("error", usage) == usage.splitlines()
