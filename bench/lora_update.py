"""The LoRA update alone, per AdamW implementation: what a step costs after the forward + backward.

    python -m bench.lora_update                                  # the small SDXL-shaped model
    python -m bench.lora_update --model PATH --rounds 20 --steps 50

Times the update the trainer runs once per optimizer step (gradient clipping to norm 1, AdamW, then
zero_grad(set_to_none)) over the trainable parameters of the benches' LoRA (bench/floor_batch.py: rank
4, the family's default targets), with random gradients in place of a backward, so nothing else is in the
figure. AdamW's fused, foreach and for-loop implementations run interleaved, a round each in turn, and
the table gives the median of the rounds' medians. The trainer picks with `trainer.fast_floor.adamw_options`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

IMPLEMENTATIONS: dict[str, dict[str, bool]] = {
    "fused": {"fused": True},
    "foreach": {"foreach": True},
    "for-loop": {"foreach": False},
}


def time_updates(params: list[torch.nn.Parameter], *, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds of one update per implementation (and of clipping alone, "clip only")."""
    optimizers: dict[str, Any] = {
        name: torch.optim.AdamW(params, lr=1e-6, **options) for name, options in IMPLEMENTATIONS.items()
    }
    times: dict[str, list[float]] = {name: [] for name in [*optimizers, "clip only"]}
    for _ in range(rounds):
        for name in times:
            optimizer = optimizers.get(name)
            per_step = []
            for _ in range(steps):
                for p in params:
                    p.grad = torch.randn_like(p)
                started = time.perf_counter()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                if optimizer is not None:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                per_step.append(time.perf_counter() - started)
            times[name].append(statistics.median(per_step))
    return {name: statistics.median(values) for name, values in times.items()}


def lora_parameters(model: str) -> list[torch.nn.Parameter]:
    """The trainable parameters of the benches' LoRA (bench.floor_batch) on `model`'s denoiser, on the CPU."""
    from bench.floor_batch import load_with_lora
    from trainer.lora import trainable_parameters

    return trainable_parameters(load_with_lora(model, torch.device("cpu")).denoiser)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a diffusers model folder (default: the small SDXL-shaped model)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30, help="timed updates per implementation and round")
    args = parser.parse_args()
    if args.model is None:
        from bench.trainer_step import _model

        args.model = str(_model("sdxl", "small"))
    params = lora_parameters(args.model)
    medians = time_updates(params, rounds=args.rounds, steps=args.steps)
    elements = sum(p.numel() for p in params)
    print(f"\n{len(params)} LoRA tensors, {elements} parameters, torch {torch.__version__}")
    print(f"{'update':10} {'ms':>7} {'÷ fused':>8}")
    for name, seconds in medians.items():
        print(f"{name:10} {1000 * seconds:7.2f} {seconds / medians['fused']:8.2f}")


if __name__ == "__main__":
    main()
