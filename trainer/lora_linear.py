"""The LoRA layer the trainer attaches to the denoiser's linear layers: peft's `lora.Linear`, with its
plain case computed in fewer, larger operations.

peft's forward runs the base layer, then `lora_B(lora_A(dropout(x))) * scaling`, adds that to the base's
output and casts it back: three module calls, a multiply and an add over the whole output, and their
backward. Here the same sum is two matrix products on the flattened tokens, the second accumulating into
the base's output with the scaling as its `alpha` (`torch.addmm`), so the output is written once. That
made the SDXL UNet's LoRA forward + backward 5% faster on the CPU (docs/benchmarks.md, "The LoRA layer").

The plain case is one active adapter, unmerged, no variant (DoRA and the like), no LoRA bias, a plain
`nn.Linear` base and one dtype throughout (or autocast, which casts every operand alike). Anything else
goes to peft's forward unchanged. Parameters, their names and the saved adapter are peft's, so export,
resume and `load_lora_weights` see an ordinary peft LoRA.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as PeftLoraLinear
from torch import nn


class FusedLoraLinear(PeftLoraLinear):  # type: ignore[misc]  # peft ships no type information
    # Set by trainer.lora.lora_masked: a (N,) bool per batch item; False items get the base output only.
    batch_keep: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = None if args or kwargs else self._plain_adapter(x)
        if adapter is None:
            return super().forward(x, *args, **kwargs)  # type: ignore[no-any-return]
        base: nn.Linear = self.base_layer
        down_layer: nn.Linear = self.lora_A[adapter]
        up_layer: nn.Linear = self.lora_B[adapter]
        tokens = x.reshape(-1, x.shape[-1])
        out = F.linear(tokens, base.weight, base.bias)
        down = F.linear(self.lora_dropout[adapter](tokens), down_layer.weight)
        if self.batch_keep is not None:
            down = masked_items(down, self.batch_keep, items=x.shape[0])
        out = torch.addmm(out, down, up_layer.weight.t(), alpha=self.scaling[adapter])
        return out.view(*x.shape[:-1], out.shape[-1])

    def _plain_adapter(self, x: torch.Tensor) -> str | None:
        """The one active adapter when this call is the plain case (see the module's note), else None."""
        if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        adapter: str = self.active_adapters[0]
        if (
            adapter not in self.lora_A
            or adapter in self.lora_variant
            or type(self.base_layer) is not nn.Linear
        ):
            return None
        down_layer, up_layer = self.lora_A[adapter], self.lora_B[adapter]
        if up_layer.bias is not None or _hooked(down_layer) or _hooked(up_layer):
            return None
        same_dtype = (
            x.dtype == self.base_layer.weight.dtype == down_layer.weight.dtype == up_layer.weight.dtype
        )
        if not (same_dtype or torch.is_autocast_enabled(x.device.type)):
            return None
        return adapter


def masked_items(values: torch.Tensor, keep: torch.Tensor, *, items: int) -> torch.Tensor:
    """`values`, whose elements fall into `items` equal runs in batch order, with the runs of the items
    where `keep` (a (items,) bool) is False zeroed. Both ways a LoRA's output is masked use it: on the
    rank-wide product here (a fraction of the output's size), on lora_B's output in peft's layers."""
    if len(keep) != items:
        raise ValueError(f"a LoRA layer's batch axis has {items} items, the mask {len(keep)}")
    per_item = values.reshape(items, -1)
    return (per_item * keep.view(-1, 1).to(values.dtype)).view(values.shape)


def _hooked(module: nn.Module) -> bool:
    """Whether something observes or rewrites this submodule's call, which the plain case skips."""
    return bool(module._forward_hooks or module._forward_pre_hooks)
