"""Several processes train one job data-parallel (`gpus` > 1): here 2 CPU processes over gloo, started by
`accelerate launch` exactly as a worker starts them. Both ranks train their own share with their own
noise, the main one reports and writes, and a stopped run resumes to the same adapter."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch
from accelerate.data_loader import prepare_data_loader
from safetensors.torch import load_file

from tests.support.specs import tiny_spec
from trainer.checkpoints import complete_checkpoints
from trainer.errors import TrainingError, WorldSizeError
from trainer.events import Artifact, Event, Finished, Started, Step
from trainer.families.registry import load_family
from trainer.launch import LaunchResult, RankFailedError, train_data_parallel
from trainer.loop import train
from trainer.session import _build_data, _cache_store, epoch_loader

STEPS = 12


@dataclass
class Run:
    result: LaunchResult
    events: list[Event]
    out: Path

    def of(self, kind: type) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


def _launch(
    base_model: Path, dataset: Path, out: Path, *, stop_after_step: int = STEPS, method: str = "mapo"
) -> Run:
    """Two processes train STEPS steps; a stop is requested once `stop_after_step` is reported."""
    events: list[Event] = []
    spec = tiny_spec(base_model, gpus=2, max_train_steps=STEPS, checkpoint_every_n_steps=4, method=method)

    def should_stop() -> bool:
        return any(isinstance(e, Step) and e.step >= stop_after_step for e in events)

    result = train_data_parallel(spec, dataset, out, on_event=events.append, should_stop=should_stop)
    return Run(result, events, out)


@pytest.fixture(scope="module")
def straight(tiny_sd: Path, color_pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One uninterrupted two-process run, shared by the tests that only read it."""
    return _launch(tiny_sd, color_pairs, tmp_path_factory.mktemp("straight"))


@pytest.mark.slow
def test_two_processes_train_and_the_main_one_reports_once(straight: Run) -> None:
    assert not straight.result.stopped and straight.result.final_step == STEPS
    started = straight.of(Started)
    assert len(started) == 1, "only the main process reports"
    assert started[0].world_size == 2  # type: ignore[attr-defined]
    assert started[0].effective_batch_size == 2 * 2 * 1  # type: ignore[attr-defined]
    assert [e.step for e in straight.of(Step)] == list(range(1, STEPS + 1))  # type: ignore[attr-defined]
    assert straight.events[-1] == Finished(step=STEPS, total_steps=STEPS, stopped=False)


@pytest.mark.slow
def test_each_rank_keeps_its_own_random_stream(straight: Run) -> None:
    _, newest = complete_checkpoints(straight.out)[-1]
    states = [torch.load(newest / "state" / f"random_states_{r}.pkl", weights_only=False) for r in (0, 1)]
    assert not torch.equal(states[0]["torch_manual_seed"], states[1]["torch_manual_seed"])


@pytest.mark.slow
def test_one_adapter_is_written_and_diffusers_loads_it(straight: Run, tiny_sd: Path) -> None:
    from diffusers import StableDiffusionPipeline

    assert sorted(a.format for a in straight.of(Artifact)) == ["diffusers", "kohya"]  # type: ignore[attr-defined]
    adapter = straight.out / "adapter"
    names = sorted(p.name for p in adapter.iterdir())
    assert names == ["lora_kohya.safetensors", "pytorch_lora_weights.safetensors"]
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd)
    pipeline.load_lora_weights(adapter)
    assert pipeline.get_active_adapters(), "the LoRA is attached to the pipeline"


@pytest.mark.slow
def test_two_processes_train_every_family_to_one_adapter_that_loads(
    family_name: str, tiny_model: Path, color_pairs: Path, tmp_path: Path
) -> None:
    from diffusers import DiffusionPipeline

    run = _launch(tiny_model, color_pairs, tmp_path)
    [started] = run.of(Started)
    assert (started.world_size, started.model_family) == (2, family_name)  # type: ignore[attr-defined]
    assert [e.step for e in run.of(Step)] == list(range(1, STEPS + 1))  # type: ignore[attr-defined]
    pipeline = DiffusionPipeline.from_pretrained(str(tiny_model))
    pipeline.load_lora_weights(tmp_path / "adapter")
    assert pipeline.get_active_adapters(), "the LoRA is attached to the pipeline"


@pytest.mark.slow
def test_two_processes_train_sft_on_the_chosen_half_to_one_adapter(
    tiny_sdxl: Path, color_pairs: Path, tmp_path: Path
) -> None:
    run = _launch(tiny_sdxl, color_pairs, tmp_path, method="sft")
    steps = run.of(Step)
    assert [e.step for e in steps] == list(range(1, STEPS + 1))  # type: ignore[attr-defined]
    assert all(math.isfinite(e.metrics["loss"]) for e in steps)  # type: ignore[attr-defined]
    assert (tmp_path / "adapter" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_adapter_of_the_uninterrupted_one(
    straight: Run, tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    first = _launch(tiny_sd, color_pairs, tmp_path, stop_after_step=2)
    assert first.result.stopped and first.result.final_step < STEPS
    stopped_at = first.result.final_step
    assert complete_checkpoints(tmp_path)[-1][0] == stopped_at, "a stop saves the steps done so far"
    second = _launch(tiny_sd, color_pairs, tmp_path)
    assert second.of(Started)[0].resumed_from_step == stopped_at  # type: ignore[attr-defined]
    assert [e.step for e in second.of(Step)] == list(range(stopped_at + 1, STEPS + 1))  # type: ignore[attr-defined]
    a = load_file(str(straight.out / "adapter" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "adapter" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_typed_error_of_the_ranks_is_the_runs_error(tiny_sd: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as failure:
        _launch(tiny_sd, tmp_path / "no-such-dataset", tmp_path / "out")
    assert failure.value.code == "invalid_dataset", str(failure.value)[-3000:]


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_with_the_ranks_stderr(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    def kill_a_rank(event: Event) -> None:
        if isinstance(event, Step) and event.step == 1:
            ranks = [
                p
                for p in psutil.Process().children(recursive=True)
                if "trainer" in p.cmdline() and "accelerate.commands.launch" not in p.cmdline()
            ]
            ranks[-1].kill()

    spec = tiny_spec(tiny_sd, gpus=2, max_train_steps=200, checkpoint_every_n_steps=100)
    with pytest.raises(RankFailedError) as failure:
        train_data_parallel(spec, color_pairs, tmp_path, on_event=kill_a_rank)
    assert failure.value.code == "rank_failed"
    assert "stderr:" in failure.value.message and "SIGKILL" in failure.value.message


def test_a_spec_for_two_gpus_refuses_to_run_in_one_process(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    with pytest.raises(WorldSizeError, match="gpus is 2 but this run has 1 process"):
        train(tiny_spec(tiny_sd, gpus=2), color_pairs, tmp_path, on_event=lambda e: None)


def test_each_rank_gets_its_own_share_of_every_epoch(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    spec = tiny_spec(tiny_sd, gpus=2)
    store = _cache_store(spec, tmp_path, writes=False)
    model = load_family(str(tiny_sd), device=torch.device("cpu"), weight_dtype=torch.float32)
    shares = []
    for rank in (0, 1):
        loader = _build_data(spec, model, color_pairs, 32, store=store).loader
        shard = prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False)
        shard.set_epoch(0)
        shares.append([int(i) for batch in shard for i in batch.indices])
    assert len(shares[0]) == len(shares[1]) == 4
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(8))


def test_a_rank_resumed_mid_epoch_sees_the_rest_of_that_epoch_s_order(
    tiny_sd: Path, color_pairs: Path, tmp_path: Path
) -> None:
    # accelerate's skipping loader of several processes does not pass set_epoch on to the sampler: a run
    # resumed mid-epoch replayed epoch 0's order and ended with a different adapter than an unbroken run.
    spec = tiny_spec(tiny_sd, gpus=2)
    store = _cache_store(spec, tmp_path, writes=False)
    model = load_family(str(tiny_sd), device=torch.device("cpu"), weight_dtype=torch.float32)
    for rank in (0, 1):
        orders = []
        for skip in (0, 1):
            data = _build_data(spec, model, color_pairs, 32, store=store)
            shard = prepare_data_loader(data.loader, num_processes=2, process_index=rank, put_on_device=False)
            loader = epoch_loader(shard, data.sampler, 1, skip_batches=skip)
            orders.append([[int(i) for i in batch.indices] for batch in loader])
        whole, resumed = orders
        assert len(whole) == 2 and resumed == whole[1:]
