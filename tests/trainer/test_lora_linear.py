"""The trainer's LoRA linear (trainer/lora_linear.py) computes exactly what peft's does, in fewer operations,
and hands every case it does not cover to peft."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.lora import Linear as PeftLoraLinear
from torch import nn

from trainer.families.registry import load_family
from trainer.lora import attach_lora, lora_masked, lora_switched_off
from trainer.lora_linear import FusedLoraLinear


class _Projections(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.to_q = nn.Linear(16, 24, bias=bias)
        self.to_out = nn.Linear(24, 8, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_out(torch.tanh(self.to_q(x)))


def _pair(*, bias: bool = True, dropout: float = 0.0) -> tuple[nn.Module, nn.Module]:
    """The same model twice, once with peft's LoRA layers and once with the trainer's, equal weights and a
    non-zero B so the adapter's path counts."""
    torch.manual_seed(0)
    base = _Projections(bias)
    models = []
    for fused in (False, True):
        model = _Projections(bias)
        model.load_state_dict(base.state_dict())
        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["to_q", "to_out"])
        if fused:
            config._register_custom_module({nn.Linear: FusedLoraLinear})
        inject_adapter_in_model(config, model)
        models.append(model)
    stock, fused_model = models
    torch.manual_seed(1)
    for name, param in stock.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, 0.1)
    fused_model.load_state_dict(stock.state_dict())
    assert isinstance(fused_model.to_q, FusedLoraLinear)
    assert type(stock.to_q) is PeftLoraLinear
    return stock, fused_model


def _outputs_and_grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.pow(2).sum().backward()
    assert x.grad is not None
    return out.detach(), [x.grad] + [p.grad for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("shape", [(5, 16), (3, 7, 16), (2, 3, 4, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_outputs_and_gradients_equal_peft_s(shape: tuple[int, ...], bias: bool) -> None:
    stock, fused = _pair(bias=bias)
    x = torch.randn(*shape)
    stock_out, stock_grads = _outputs_and_grads(stock, x)
    fused_out, fused_grads = _outputs_and_grads(fused, x)
    assert fused_out.shape == stock_out.shape
    torch.testing.assert_close(fused_out, stock_out)
    assert len(fused_grads) == len(stock_grads) == 1 + 4  # the input's, then A and B of both layers
    for mine, theirs in zip(fused_grads, stock_grads, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_a_non_contiguous_input_gives_peft_s_output() -> None:
    stock, fused = _pair()
    x = torch.randn(16, 6).t()  # (6, 16), transposed storage
    torch.testing.assert_close(fused(x), stock(x))


def test_dropout_draws_the_same_mask_as_peft() -> None:
    stock, fused = _pair(dropout=0.5)
    x = torch.randn(3, 7, 16)
    torch.manual_seed(5)
    theirs = stock(x)
    torch.manual_seed(5)
    mine = fused(x)
    torch.testing.assert_close(mine, theirs)
    stock.eval(), fused.eval()
    torch.testing.assert_close(fused(x), stock(x))


def test_under_bf16_autocast_the_output_matches_peft_s_dtype_and_value() -> None:
    stock, fused = _pair()
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theirs, mine = stock(x), fused(x)
    assert mine.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(mine.float(), theirs.float(), rtol=2e-2, atol=2e-2)


def test_cases_outside_the_plain_one_are_peft_s_own_results() -> None:
    stock, fused = _pair()
    x = torch.randn(4, 16)
    base = _Projections()
    base.load_state_dict(
        {k.replace(".base_layer", ""): v for k, v in fused.state_dict().items() if "lora" not in k}
    )
    for model in (stock, fused):
        for layer in (model.to_q, model.to_out):
            layer.enable_adapters(False)
    torch.testing.assert_close(fused(x), base(x), msg="adapters off is the base model")
    for model in (stock, fused):
        for layer in (model.to_q, model.to_out):
            layer.enable_adapters(True)
            layer.merge()
    torch.testing.assert_close(fused(x), stock(x), msg="merged weights")
    for layer in (fused.to_q, fused.to_out):
        layer.unmerge()
    mixed = torch.randn(4, 16, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        # One dtype is not the plain case, and peft's own forward refuses mixed float64/float32 too.
        fused(mixed)


def test_a_hook_on_the_adapter_still_sees_its_call() -> None:
    _, fused = _pair()
    calls: list[torch.Size] = []
    fused.to_q.lora_B["default"].register_forward_hook(lambda _m, _a, out: calls.append(out.shape))
    fused(torch.randn(3, 16))
    assert calls == [torch.Size([3, 24])]


def test_the_batch_mask_keeps_the_lora_on_the_kept_items_only() -> None:
    stock, fused = _pair()
    x = torch.randn(4, 5, 16)
    keep = torch.tensor([True, False, True, False])
    with lora_masked(stock, keep):
        theirs, their_grads = _outputs_and_grads(stock, x)
    with lora_masked(fused, keep):
        mine, my_grads = _outputs_and_grads(fused, x)
    torch.testing.assert_close(mine, theirs)
    for a, b in zip(my_grads, their_grads, strict=True):
        torch.testing.assert_close(a, b)
    assert fused.to_q.batch_keep is None, "the mask is gone after the block"
    with (
        lora_masked(fused, torch.tensor([True, False])),
        pytest.raises(ValueError, match="batch axis has 4 items"),
    ):
        fused(x)


def test_every_targeted_linear_of_a_family_gets_it_and_the_adapter_keeps_peft_s_names(
    tiny_model: Path,
) -> None:
    folder = tiny_model
    loaded = load_family(str(folder), device=torch.device("cpu"), weight_dtype=torch.float32)
    targets = list(loaded.default_lora_targets)
    attach_lora(loaded.denoiser, rank=4, alpha=4.0, dropout=0.0, targets=targets)
    layers = [m for m in loaded.denoiser.modules() if isinstance(m, PeftLoraLinear)]
    assert layers and all(isinstance(m, FusedLoraLinear) for m in layers)
    stock = load_family(str(folder), device=torch.device("cpu"), weight_dtype=torch.float32).denoiser
    stock.add_adapter(LoraConfig(r=4, lora_alpha=4.0, init_lora_weights="gaussian", target_modules=targets))
    assert get_peft_model_state_dict(loaded.denoiser).keys() == get_peft_model_state_dict(stock).keys()


def test_switched_off_the_model_is_its_base_and_every_lora_weight_stays_trainable() -> None:
    """DPO's reference pass and the base-model samples switch the LoRA off; peft's own switch would also
    toggle requires_grad on every LoRA weight, which this one leaves alone."""
    stock, fused = _pair()
    x = torch.randn(4, 16)
    with torch.no_grad():
        with_lora = fused(x)
        stock.to_q.enable_adapters(False)
        stock.to_out.enable_adapters(False)
        base = stock(x)
        with lora_switched_off(fused):
            switched = fused(x)
            trainable_inside = [p for p in fused.parameters() if p.requires_grad]
    assert not torch.allclose(with_lora, base), "the LoRA must change the output for this to test anything"
    torch.testing.assert_close(switched, base)
    torch.testing.assert_close(fused(x), with_lora, msg="back on after the block")
    assert len(trainable_inside) == 4, "both layers' A and B stay trainable while switched off"


def test_switching_off_leaves_a_layer_that_was_off_before_off_after() -> None:
    _, fused = _pair()
    fused.to_q.enable_adapters(False)
    with lora_switched_off(fused):
        assert fused.to_q.disable_adapters and fused.to_out.disable_adapters
    assert fused.to_q.disable_adapters, "it was off before the block"
    assert not fused.to_out.disable_adapters
    with pytest.raises(RuntimeError, match="inside"), lora_switched_off(fused):
        raise RuntimeError("inside")
    assert not fused.to_out.disable_adapters, "back on after an exception too"
    fused.to_out.merge()
    with pytest.raises(ValueError, match="merged"), lora_switched_off(fused):
        pass
    assert not fused.to_out.disable_adapters, "a refused switch changes nothing"
