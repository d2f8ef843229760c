import pytest
import torch
from torch import nn

from cookbook import methods, models


def tiny():
    return models.resnet18(4)


def views(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 3, 32, 32, generator=g), torch.rand(n, 3, 32, 32, generator=g)]


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_interface(name):
    m = methods.build(name, tiny())
    x = views()
    loss = m.loss(x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert m.backbone.net[1].weight.grad is not None
    assert m.representation(x[0]).shape == (8, 32)
    assert m.embedding(x[0]).shape[0] == 8
    assert len(m.default_views(32)) == 2
    with pytest.raises(ValueError, match="2 views"):
        m.loss(x[:1])


def test_build_rejects_unknown_method():
    with pytest.raises(ValueError, match="simclr"):
        methods.build("nope", tiny())


def test_simclr_projector_options():
    assert isinstance(methods.SimCLR(tiny(), proj_depth=0).projector, nn.Identity)
    m = methods.SimCLR(tiny(), proj_depth=3, proj_dim=64)
    assert m.embedding(torch.rand(4, 3, 32, 32)).shape == (4, 64)
    with pytest.raises(ValueError):
        methods.SimCLR(tiny(), temperature=0)


def test_simclr_loss_is_ntxent_of_embeddings():
    from lightly.loss import NTXentLoss
    m = methods.SimCLR(tiny(), temperature=0.2).eval()  # eval: batch norm does not depend on the batch
    x = views()
    expected = NTXentLoss(temperature=0.2)(m.embedding(x[0]), m.embedding(x[1]))
    torch.testing.assert_close(m.loss(x), expected)


def test_byol_teacher_is_frozen_copy_and_follows_by_ema():
    m = methods.BYOL(tiny(), momentum=0.9, momentum_end=0.9)
    assert all(not p.requires_grad for p in m.teacher_backbone.parameters())
    s = next(m.backbone.parameters())
    t = next(m.teacher_backbone.parameters())
    torch.testing.assert_close(s, t)
    with torch.no_grad():
        s.add_(1.0)
    before = t.clone()
    m.after_step(0, 10)
    torch.testing.assert_close(t, 0.9 * before + 0.1 * s)


def test_momentum_schedule_is_cosine_to_end_value():
    m = methods.BYOL(tiny(), momentum=0.99, momentum_end=1.0)
    assert m.momentum_at(0, 100) == pytest.approx(0.99)
    assert m.momentum_at(99, 100) == pytest.approx(1.0)
    assert 0.99 < m.momentum_at(50, 100) < 1.0


def test_byol_gradients_never_reach_the_teacher():
    m = methods.BYOL(tiny())
    m.loss(views()).backward()
    assert all(p.grad is None for p in m.teacher_backbone.parameters())


def test_byol_switches():
    simsiam = methods.BYOL(tiny(), momentum=0.0)
    assert not hasattr(simsiam, "teacher_backbone") and simsiam._ema_pairs == []
    assert isinstance(methods.BYOL(tiny(), predictor=False).predictor, nn.Identity)
    with pytest.raises(ValueError, match="momentum=0"):
        methods.BYOL(tiny(), stop_gradient=False)


def test_stop_gradient_changes_the_gradient():
    """Without stop-gradient the target branch also receives gradient, so the
    projector's gradient differs (same weights, same views)."""
    torch.manual_seed(0)
    a = methods.BYOL(tiny(), momentum=0.0, stop_gradient=True)
    b = methods.BYOL(tiny(), momentum=0.0, stop_gradient=False)
    b.load_state_dict(a.state_dict())
    x = views()
    for m in (a, b):
        m.loss(x).backward()
    ga = next(a.projector.parameters()).grad
    gb = next(b.projector.parameters()).grad
    assert not torch.allclose(ga, gb)
