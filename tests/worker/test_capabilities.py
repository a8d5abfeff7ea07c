"""What a worker advertises: its GPUs as nvidia-smi reports them, or cpu."""

from pathlib import Path

import pytest

from worker.capabilities import NO_GPU, Gpus, advertisement, detect_gpus, parse_nvidia_smi

H100_X2 = "NVIDIA H100 80GB HBM3, 81559\nNVIDIA H100 80GB HBM3, 81559\n"


def test_nvidia_smi_csv_becomes_model_memory_and_count() -> None:
    assert parse_nvidia_smi(H100_X2) == Gpus(model="NVIDIA H100 80GB HBM3", memory_mb=81559, count=2)
    assert parse_nvidia_smi("") == NO_GPU


def test_no_visible_device_means_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == NO_GPU
    row = advertisement("cpu1@h", ["mapo.gpu"])
    assert (row["device"], row["gpu_count"], row["gpu_model"]) == ("cpu", 0, None)


def test_only_the_visible_gpus_are_counted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A stand-in nvidia-smi that answers like the real one for the GPUs `-i` selects.
    script = tmp_path / "nvidia-smi"
    script.write_text(
        '#!/bin/sh\nfor a in "$@"; do last="$a"; done\n'
        'case "$*" in *" -i "*) n=$(echo "$last" | tr , "\\n" | wc -l) ;; *) n=8 ;; esac\n'
        'i=0; while [ "$i" -lt "$n" ]; do echo "NVIDIA H100 80GB HBM3, 81559"; i=$((i+1)); done\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert detect_gpus().count == 8
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    row = advertisement("h100@h", ["mapo.gpu.h100"])
    assert (row["device"], row["gpu_count"], row["gpu_memory_mb"]) == ("cuda", 2, 81559)
