"""Why a training process died, in words: the exit Celery's pool reports, and whether the OOM killer of
the worker's memory cgroup fired meanwhile.

A pool child that dies mid-task reaches the main process as billiard's WorkerLostError, "Worker exited
prematurely: signal 9 (SIGKILL) Job: 0." (billiard.common.human_status). SIGKILL alone does not say who
sent it; the cgroup's `oom_kill` counter (cgroup v2 `memory.events`, v1 `memory.oom_control`) going up
while the job ran does: then the cause is out of memory.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

_SIGNAL = re.compile(r"signal (\d+)")
_EXITCODE = re.compile(r"exitcode (-?\d+)")


def describe_death(worker_lost: str, *, oom_kills_before: int | None, oom_kills_after: int | None) -> str:
    """The cause of a child's death, from billiard's WorkerLostError text and the cgroup's OOM kill
    counts read before the job started and after it died (None where there is no counter to read)."""
    killed = _SIGNAL.search(worker_lost)
    if killed is not None:
        oom_killed = None not in (oom_kills_before, oom_kills_after) and oom_kills_after != oom_kills_before
        return _killed_by(int(killed.group(1)), oom_killed=oom_killed)
    exited = _EXITCODE.search(worker_lost)
    if exited is not None:
        return f"its training process exited with code {exited.group(1)}"
    return f"its training process died: {worker_lost}"


def _killed_by(number: int, *, oom_killed: bool) -> str:
    if number == signal.SIGKILL and oom_killed:
        return "its training process was killed by SIGKILL: out of memory (its cgroup's OOM killer fired)"
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return f"its training process was killed by {name}"


def oom_kill_count(proc: Path = Path("/proc/self")) -> int | None:
    """How many processes the OOM killer has killed in this process's memory cgroup (and below it); None
    where the counter cannot be read (no memory cgroup, another OS)."""
    counter = _oom_counter_file(proc)
    if counter is None:
        return None
    try:
        lines = counter.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return None


def _oom_counter_file(proc: Path) -> Path | None:
    """`memory.events` of the cgroup v2 this process is in, or `memory.oom_control` of its v1 memory
    cgroup, found through /proc/self/mountinfo (where each hierarchy is mounted) and /proc/self/cgroup."""
    try:
        groups = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    paths: dict[str, str] = {}
    for line in groups:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    for line in mounts:
        fields, _, tail = line.partition(" - ")
        parts, (fstype, _, options) = fields.split(), [*tail.split(), "", "", ""][:3]
        root, mount_point = parts[3], parts[4]
        if fstype == "cgroup2" and "" in paths:
            candidate = _within(mount_point, root, paths[""]) / "memory.events"
        elif fstype == "cgroup" and "memory" in options.split(",") and "memory" in paths:
            candidate = _within(mount_point, root, paths["memory"]) / "memory.oom_control"
        else:
            continue
        if candidate.is_file():
            return candidate
    return None


def _within(mount_point: str, root: str, path: str) -> Path:
    """Where cgroup `path` (as /proc/self/cgroup names it) lies under a hierarchy mounted at
    `mount_point` from its `root`."""
    relative = path[len(root) :] if root != "/" and path.startswith(root) else path
    return Path(mount_point) / relative.lstrip("/")
