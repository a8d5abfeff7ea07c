"""MaPO trainer: a spec in, typed events out. No database, HTTP or Celery in here.

Importing this package is cheap and torch-free; `train` is imported lazily from `trainer.loop`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.loop import TrainResult, train

__all__ = ["TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from trainer import loop

        return getattr(loop, name)
    raise AttributeError(name)
