"""Printing training events: JSON lines for machines, a rich progress bar for people on a terminal."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from trainer.events import Event, Started, Step, to_dict


class EventPrinter:
    """Callable `on_event` sink: each event becomes one JSON line; Step events also move the bar."""

    def __init__(self, out: TextIO, *, show_progress: bool) -> None:
        self.out = out
        self.progress: Progress | None = None
        if show_progress:
            self.progress = Progress(
                TextColumn("[bold]step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeRemainingColumn(),
                console=None,
                transient=False,
            )
        self._task: TaskID | None = None

    def __enter__(self) -> EventPrinter:
        if self.progress is not None:
            self.progress.console.file = sys.stderr
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, event: Event) -> None:
        self.out.write(json.dumps(to_dict(event)) + "\n")
        self.out.flush()
        if self.progress is None:
            return
        if isinstance(event, Started):
            self._task = self.progress.add_task(
                "train", total=event.total_steps, completed=event.resumed_from_step, loss="-"
            )
        elif isinstance(event, Step) and self._task is not None:
            self.progress.update(self._task, completed=event.step, loss=f"{event.metrics['loss']:.4f}")
