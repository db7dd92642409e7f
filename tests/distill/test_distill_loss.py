"""The distillation losses against values computed by hand (plain Python floats)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slimkit.distill import IGNORE_INDEX, attention_loss, attention_map, hint_loss, kd_loss


def _softmax(z: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _ce(z: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in z)) - z[label]


S = [[1.0, 0.0, -1.0], [0.5, 2.0, -0.3]]
T_ = [[2.0, 0.0, -2.0], [-1.0, 3.0, 0.2]]
LABELS = [0, 2]


def test_kd_loss_matches_the_formula_computed_by_hand() -> None:
    temp, alpha = 2.0, 0.3
    hard = sum(_ce(z, y) for z, y in zip(S, LABELS, strict=True)) / 2
    kl = sum(_kl(_softmax(t, temp), _softmax(s, temp)) for s, t in zip(S, T_, strict=True)) / 2
    expected = (1 - alpha) * hard + alpha * temp**2 * kl
    got = kd_loss(torch.tensor(S), torch.tensor(T_), torch.tensor(LABELS), temp, alpha)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_the_soft_term_is_scaled_by_t_squared() -> None:
    s, t = torch.tensor(S), torch.tensor(T_)
    for temp in (1.0, 3.0, 8.0):
        kl = sum(_kl(_softmax(b, temp), _softmax(a, temp)) for a, b in zip(S, T_, strict=True)) / 2
        assert float(kd_loss(s, t, None, temp)) == pytest.approx(temp**2 * kl, rel=1e-5)
        # With alpha = 1 the labels do not matter: the soft term alone.
        with_labels = kd_loss(s, t, torch.tensor(LABELS), temp, alpha=1.0)
        assert float(with_labels) == pytest.approx(temp**2 * kl, rel=1e-5)


def test_t_squared_keeps_the_gradient_on_the_scale_of_the_hard_term() -> None:
    # d(T^2 KL)/d(student logits) = T (softmax(s/T) - softmax(t/T)) / N: it shrinks as 1/T
    # (not 1/T^2) only through the softmax difference.
    temp = 4.0
    s = torch.tensor(S, requires_grad=True)
    kd_loss(s, torch.tensor(T_), None, temp).backward()
    expected = [
        [temp * (ps - pt) / 2 for ps, pt in zip(_softmax(a, temp), _softmax(b, temp), strict=True)]
        for a, b in zip(S, T_, strict=True)
    ]
    assert torch.allclose(s.grad, torch.tensor(expected), atol=1e-6)


def test_t_equal_1_is_the_usual_kl_divergence_per_sample() -> None:
    s, t = torch.tensor(S), torch.tensor(T_)
    usual = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean")
    assert float(kd_loss(s, t, None, temperature=1.0)) == pytest.approx(float(usual), rel=1e-6)
    # batchmean: summed over classes, averaged over the 2 samples (not over the 6 elements).
    by_hand = sum(_kl(_softmax(b), _softmax(a)) for a, b in zip(S, T_, strict=True)) / 2
    assert float(usual) == pytest.approx(by_hand, rel=1e-6)


def test_alpha_0_is_cross_entropy_and_identical_logits_leave_only_it() -> None:
    s, t, y = torch.tensor(S), torch.tensor(T_), torch.tensor(LABELS)
    assert float(kd_loss(s, t, y, 4.0, alpha=0.0)) == pytest.approx(float(F.cross_entropy(s, y)))
    same = kd_loss(s, s, y, 4.0, alpha=0.5)
    assert float(same) == pytest.approx(0.5 * float(F.cross_entropy(s, y)), rel=1e-6)
    smooth = kd_loss(s, t, y, 4.0, alpha=0.0, label_smoothing=0.1)
    assert float(smooth) == pytest.approx(float(F.cross_entropy(s, y, label_smoothing=0.1)))


def test_unlabeled_samples_get_the_soft_term_alone() -> None:
    s, t = torch.tensor(S), torch.tensor(T_)
    temp, alpha = 2.0, 0.4
    partly = torch.tensor([LABELS[0], IGNORE_INDEX])
    kl = sum(_kl(_softmax(b, temp), _softmax(a, temp)) for a, b in zip(S, T_, strict=True)) / 2
    expected = (1 - alpha) * _ce(S[0], LABELS[0]) + alpha * temp**2 * kl
    assert float(kd_loss(s, t, partly, temp, alpha)) == pytest.approx(expected, rel=1e-6)
    # A batch with no label at all: finite, and still differentiable.
    none = torch.full((2,), IGNORE_INDEX)
    student = s.clone().requires_grad_(True)
    loss = kd_loss(student, t, none, temp, alpha)
    assert float(loss.detach()) == pytest.approx(alpha * temp**2 * kl, rel=1e-6)
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_invalid_temperature_or_alpha_is_refused() -> None:
    s = torch.tensor(S)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, s, None, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, s, None, alpha=1.5)


def test_hint_and_attention_losses_by_hand() -> None:
    a = torch.arange(16.0).reshape(1, 1, 4, 4)
    b = torch.zeros(1, 1, 2, 2)
    # 4x4 pooled to 2x2: block means 2.5, 4.5, 10.5, 12.5.
    pooled = [2.5, 4.5, 10.5, 12.5]
    assert float(hint_loss(a, b)) == pytest.approx(sum(v * v for v in pooled) / 4)
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # [1, 2 channels, 1, 2]
    energy = [(1 + 9) / 2, (4 + 0) / 2]
    norm = math.sqrt(sum(e * e for e in energy))
    assert attention_map(f).tolist()[0] == pytest.approx([e / norm for e in energy])
    g = torch.tensor([[[[1.0, 0.0]]]])  # all attention on the first position
    expected = (energy[0] / norm - 1) ** 2 + (energy[1] / norm) ** 2
    assert float(attention_loss(f, g)) == pytest.approx(expected, rel=1e-6)
