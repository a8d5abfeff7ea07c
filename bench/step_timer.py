"""Run a training script or module unedited and record when each optimizer step ends.

    python -m bench.step_timer --out times.json -- path/to/train_script.py --its --args
    python -m bench.step_timer --out times.json -m trainer train --spec ...

The clock is a global torch optimizer-step hook (`register_optimizer_step_post_hook`), so it measures
the reference scripts and our trainer in exactly the same way without touching either: the interval
between two step ends is a whole step (data, forward, backward, optimizer). Writes
`{"step_ends": [perf_counter seconds...], "peak_rss_mb": float}` when the program exits, also on failure.
"""

from __future__ import annotations

import argparse
import atexit
import json
import resource
import runpy
import sys
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the step end times")
    parser.add_argument("-m", dest="module", help="run this module (like python -m) instead of a script")
    parser.add_argument("program", nargs=argparse.REMAINDER, help="script (unless -m) and its arguments")
    args = parser.parse_args()
    program = [a for a in args.program if a != "--"] if args.program[:1] == ["--"] else args.program
    step_ends = _install_clock()
    atexit.register(_write, Path(args.out), step_ends)
    if args.module:
        sys.argv = [args.module, *program]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        return
    script = Path(program[0]).resolve()
    # The reference scripts import their sibling modules (args.py, utils.py) by bare name.
    sys.path.insert(0, str(script.parent))
    sys.argv = [str(script), *program[1:]]
    runpy.run_path(str(script), run_name="__main__")


def _install_clock() -> list[float]:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    step_ends: list[float] = []

    def on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        step_ends.append(time.perf_counter())

    register_optimizer_step_post_hook(on_step)
    return step_ends


def _write(out: Path, step_ends: list[float]) -> None:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps({"step_ends": step_ends, "peak_rss_mb": peak_mb}))


if __name__ == "__main__":
    main()
