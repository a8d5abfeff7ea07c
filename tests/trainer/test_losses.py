import math

import pytest
import torch

from trainer.losses import bounded_score, dpo_loss, mapo_loss, sft_loss

# (m_w, m_l, loss) for beta 0.1, gamma 0.5, T 1000, B 1 -- the table in MAPO.md.
MAPO_TABLE = [
    (0.1, 0.1, 0.1693147181),
    (0.1, 0.2, 0.1000000000),
    (0.2, 0.1, 2.6375130176),
    (0.1, 0.1001, 0.1680931140),
    (0.15, 0.16, 0.1583936767),
    (0.0, 0.0, 0.0693147181),
]


def _t(value: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor([value], dtype=dtype)


@pytest.mark.parametrize(("m_w", "m_l", "expected"), MAPO_TABLE)
def test_mapo_loss_matches_table_in_float64(m_w: float, m_l: float, expected: float) -> None:
    loss = mapo_loss(_t(m_w), _t(m_l)).loss.item()
    assert loss == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("m_w", "m_l", "expected"), MAPO_TABLE)
def test_mapo_loss_matches_table_in_float32(m_w: float, m_l: float, expected: float) -> None:
    loss = mapo_loss(_t(m_w, torch.float32), _t(m_l, torch.float32)).loss
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    ("m", "expected"),
    [(0.05, 0.987552083), (0.1, 0.975208325), (0.2, 0.950833194), (1.0, 0.770747041), (2.0, 0.581976707)],
)
def test_bounded_score_of_half_the_error_matches_table(m: float, expected: float) -> None:
    assert bounded_score(_t(0.5 * m)).item() == pytest.approx(expected, rel=1e-8)


def test_bounded_score_is_one_at_zero_and_smooth_across_the_series_switch() -> None:
    x = torch.tensor([0.0, 9.99e-5, 1.001e-4, 1e-3], dtype=torch.float64)
    expected = [1.0] + [v / math.expm1(v) for v in x.tolist()[1:]]
    assert bounded_score(x).tolist() == pytest.approx(expected, rel=1e-12)


def test_mapo_gradients_at_a_tie_match_table() -> None:
    m_w = _t(0.1).requires_grad_()
    m_l = _t(0.1).requires_grad_()
    mapo_loss(m_w, m_l).loss.backward()
    assert m_w.grad is not None and m_l.grad is not None
    assert m_w.grad.item() == pytest.approx(13.2917, rel=1e-4)
    assert m_l.grad.item() == pytest.approx(-12.2917, rel=1e-4)


def test_mapo_is_finite_with_gradients_at_zero_error() -> None:
    m_w = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    m_l = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    result = mapo_loss(m_w, m_l)
    result.loss.backward()
    assert torch.isfinite(result.loss)
    assert m_w.grad is not None and torch.isfinite(m_w.grad).all()


def test_mapo_logs_every_term_of_the_objective() -> None:
    m_w = torch.tensor([0.1, 0.3], dtype=torch.float64)
    m_l = torch.tensor([0.2, 0.2], dtype=torch.float64)
    r = mapo_loss(m_w, m_l, beta=0.1, gamma=0.5)
    assert r.chosen_loss.item() == pytest.approx(0.2)
    assert r.rejected_loss.item() == pytest.approx(0.2)
    assert r.accuracy.item() == pytest.approx(0.5)
    assert r.margin.item() == pytest.approx((r.chosen_score - r.rejected_score).item())
    assert r.loss.item() == pytest.approx(r.chosen_loss.item() + r.preference_term.item())
    assert not r.margin.requires_grad


def test_mapo_accuracy_does_not_count_ties() -> None:
    assert mapo_loss(_t(0.1), _t(0.1)).accuracy.item() == 0.0


def test_dpo_is_ln2_when_model_equals_reference() -> None:
    err_w, err_l = torch.tensor([0.1, 0.4]), torch.tensor([0.3, 0.2])
    result = dpo_loss(err_w, err_l, err_w.clone(), err_l.clone())
    assert result.loss.item() == pytest.approx(math.log(2), rel=1e-6)
    assert result.accuracy.item() == pytest.approx(0.5)


def test_dpo_rewards_lowering_the_chosen_error_relative_to_reference() -> None:
    better = dpo_loss(_t(0.09), _t(0.1), _t(0.1), _t(0.1), beta=5000.0)
    worse = dpo_loss(_t(0.11), _t(0.1), _t(0.1), _t(0.1), beta=5000.0)
    assert better.loss.item() < math.log(2) < worse.loss.item()
    inside = -0.5 * 5000.0 * (0.09 - 0.1)
    assert better.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-inside))), rel=1e-9)
    assert better.accuracy.item() == 1.0 and worse.accuracy.item() == 0.0


def test_dpo_does_not_backpropagate_into_the_reference() -> None:
    ref = _t(0.1).requires_grad_()
    m_w = _t(0.2).requires_grad_()
    dpo_loss(m_w, _t(0.1), ref, _t(0.1)).loss.backward()
    assert ref.grad is None and m_w.grad is not None


def test_sft_is_mean_chosen_error() -> None:
    result = sft_loss(torch.tensor([0.1, 0.3], dtype=torch.float64))
    assert result.loss.item() == pytest.approx(0.2)


def test_losses_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same length"):
        mapo_loss(torch.zeros(2), torch.zeros(3))
