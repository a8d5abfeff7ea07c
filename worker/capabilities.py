"""What this worker host has to train with, as advertised in the `workers` table.

GPUs are read with `nvidia-smi`, not torch: importing torch in the worker's main process costs seconds,
and initialising CUDA there before Celery forks its pool would break CUDA in every child. Without
`nvidia-smi` (or with no GPU visible) the worker reports `cpu`.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

log = logging.getLogger(__name__)
NVIDIA_SMI_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Gpus:
    """The GPUs this process may use: all the same model in practice; memory per GPU in MiB."""

    model: str | None
    memory_mb: int | None
    count: int


NO_GPU = Gpus(model=None, memory_mb=None, count=0)


def parse_nvidia_smi(output: str) -> Gpus:
    """`nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits` → Gpus (the first
    GPU's model and memory; mixed hosts should run one worker per GPU class with CUDA_VISIBLE_DEVICES)."""
    rows = [line.rsplit(",", 1) for line in output.strip().splitlines() if "," in line]
    if not rows:
        return NO_GPU
    name, memory = rows[0]
    return Gpus(model=name.strip(), memory_mb=int(float(memory.strip())), count=len(rows))


def detect_gpus() -> Gpus:
    """The GPUs visible to this process (CUDA_VISIBLE_DEVICES respected), or NO_GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return NO_GPU
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return NO_GPU
    command = [binary, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
    if visible:
        command += ["-i", visible]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("nvidia-smi failed (%s); advertising no GPU", exc)
        return NO_GPU
    if done.returncode != 0:
        log.warning("nvidia-smi exited %d: %s; advertising no GPU", done.returncode, done.stderr.strip())
        return NO_GPU
    return parse_nvidia_smi(done.stdout)


def service_version() -> str:
    try:
        return version("mapo-service")
    except PackageNotFoundError:
        return "unknown"


def advertisement(worker_id: str, queues: list[str], gpus: Gpus | None = None) -> dict[str, Any]:
    """The `workers` row of this worker (see core.models.Worker)."""
    gpus = gpus if gpus is not None else detect_gpus()
    fields = asdict(gpus)
    return {
        "id": worker_id,
        "hostname": socket.gethostname(),
        "queues": queues,
        "device": "cuda" if gpus.count else "cpu",
        "gpu_model": fields["model"],
        "gpu_memory_mb": fields["memory_mb"],
        "gpu_count": gpus.count,
        "version": service_version(),
    }
