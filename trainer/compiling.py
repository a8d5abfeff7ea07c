"""When and how the trainer compiles the denoiser (torch.compile, inductor).

Only the blocks a denoiser repeats are compiled, each in place ("regional" compilation): every instance
of a block class shares one compiled graph, so compiling costs seconds to a minute instead of the
minutes a whole-denoiser compile takes, and saves about as much per step (docs/benchmarks.md, "Faster
floor": 0.84-0.95 x the eager pass at 128 px on the CPU, against 0.85 x for the whole UNet).

`compile_denoiser: "auto"` (the default) times the first COMPILE_PROBE_STEPS steps eagerly and compiles
when the steps left, at the measured speed, save more than compiling costs; true and false force it.
Sampling and held-out evaluation run eagerly (`eager`): their shapes and no-grad mode would each cost a
recompile for a few calls.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from trainer.events import Compile

CompileChoice = bool | Literal["auto"]

# Eager steps timed before "auto" decides; their median, so the first step's warm-up does not decide.
COMPILE_PROBE_STEPS = 3
# The share of a step compiled blocks save, taken at the low end of what was measured on the CPU at
# 64-128 px (0.84-0.98 x the eager pass in bench.trainer_step --variants --compile, in-process and
# interleaved): a job compiles when the ~60 s would be earned back twice over by a 10% saving.
COMPILE_SAVING = 0.05
# What compiling the blocks costs: 43 s measured with a cold inductor cache for the small SDXL UNet on
# 2 CPU cores (5.5 s warm); rounded up for bigger denoisers, whose distinct block shapes compile apart.
COMPILE_COST_S = 60.0


def repeated_blocks(denoiser: torch.nn.Module, names: tuple[str, ...]) -> list[torch.nn.Module]:
    """The denoiser's modules of the classes `names` (a family's `repeated_block_names()`)."""
    return [module for module in denoiser.modules() if type(module).__name__ in names]


def compile_blocks(denoiser: torch.nn.Module, names: tuple[str, ...]) -> int:
    """Compile the repeated blocks of the classes `names` in place (the denoiser keeps its class, its
    state-dict keys and peft's adapter switches); a denoiser without such blocks is compiled whole.
    Returns the blocks compiled."""
    blocks = repeated_blocks(denoiser, names)
    for block in blocks:
        block.compile()
    if not blocks:
        denoiser.compile()
    return len(blocks)


@contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules eagerly inside (no compiling, no recompiling)."""
    with torch.compiler.set_stance("force_eager"):
        yield


class CompilePlan:
    """Decides once per run whether to compile: `start` before the first step, else `after_step` once the
    probe steps are timed. Each returns the decision as a Compile event, or None while undecided/decided."""

    def __init__(self, choice: CompileChoice, *, total_steps: int) -> None:
        self.choice = choice
        self.total_steps = total_steps
        self.decided = False
        self._probe: list[float] = []

    def start(self, *, step: int) -> Compile | None:
        steps_left = self.total_steps - step
        if self.choice is True:
            return self._decide(step, True, "the spec asks for it")
        if self.choice is False:
            return self._decide(step, False, "the spec turns it off")
        if steps_left <= COMPILE_PROBE_STEPS:
            return self._decide(step, False, f"auto: {steps_left} steps left, too few to earn compiling back")
        return None

    def after_step(self, step: int, *, seconds: float) -> Compile | None:
        if self.decided:
            return None
        self._probe.append(seconds)
        if len(self._probe) < COMPILE_PROBE_STEPS:
            return None
        step_s = statistics.median(self._probe)
        steps_left = self.total_steps - step
        saving = steps_left * step_s * COMPILE_SAVING
        pays = saving > COMPILE_COST_S
        weighed = (
            f"auto: {steps_left} steps left at {step_s:.3g} s would save about {saving:.0f} s, "
            f"{'more' if pays else 'less'} than the ~{COMPILE_COST_S:.0f} s compiling costs"
        )
        return self._decide(step, pays, weighed)

    def _decide(self, step: int, compiled: bool, reason: str) -> Compile:
        self.decided = True
        return Compile(step=step, compiled=compiled, reason=reason)
