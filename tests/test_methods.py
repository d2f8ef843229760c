import pytest
import torch
from torch import nn

from cookbook import methods, models
from cookbook.methods.mim import reconstruction_images


def tiny():
    return models.resnet18(4)


def views(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 3, 32, 32, generator=g), torch.rand(n, 3, 32, 32, generator=g)]


TWO_VIEW = sorted(set(methods.METHODS) - {"mae", "simmim", "dino", "swav", "wmse"})  # MIM, multi-crop, whitening: below


@pytest.mark.parametrize("name", TWO_VIEW)
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


@pytest.mark.parametrize("build,student,teacher", [
    (lambda: methods.BYOL(tiny(), momentum=0.9, momentum_end=0.9), "backbone", "teacher_backbone"),
    (lambda: methods.BYOL(tiny(), momentum=0.9, momentum_end=0.9), "projector", "teacher_projector"),
    (lambda: methods.DINO(tiny(), output_dim=64, momentum=0.9, momentum_end=0.9), "backbone", "teacher_backbone"),
    (lambda: methods.DINO(tiny(), output_dim=64, momentum=0.9, momentum_end=0.9), "projector", "teacher_projector"),
    (lambda: methods.MoCo(tiny(), queue_size=32, momentum=0.9, momentum_end=0.9), "backbone", "key_backbone"),
    (lambda: methods.MoCo(tiny(), queue_size=32, momentum=0.9, momentum_end=0.9), "projector", "key_projector"),
])
def test_teacher_is_frozen_copy_that_follows_by_ema(build, student, teacher):
    m = build()
    assert len(m._ema_pairs) == 2
    assert all(not p.requires_grad for p in getattr(m, teacher).parameters())
    m.loss(views()).backward()
    assert all(p.grad is None for p in getattr(m, teacher).parameters())
    s, t = next(getattr(m, student).parameters()), next(getattr(m, teacher).parameters())
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


def test_byol_projector_depth():
    linear = methods.BYOL(tiny(), proj_depth=1, proj_dim=16)
    assert [m.out_features for m in linear.projector.modules() if isinstance(m, nn.Linear)] == [16]
    assert linear.embedding(torch.rand(4, 3, 32, 32)).shape == (4, 16)
    assert linear.loss(views()).ndim == 0
    with pytest.raises(ValueError, match="proj_depth >= 1"):
        methods.BYOL(tiny(), proj_depth=0)


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


# --- contrastive methods with negatives: MoCo, NNCLR, DCL ---------------------

def reference_ntxent(z0, z1, tau):
    """NT-Xent from scratch: over the 2N samples, cosine similarities / tau,
    the self-similarity masked out, cross-entropy with the other view as target."""
    n = z0.shape[0]
    z = torch.nn.functional.normalize(torch.cat([z0, z1]), dim=1)
    logits = z @ z.T / tau
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return torch.nn.functional.cross_entropy(logits, target)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_lightly_ntxent_matches_reference(tau):
    from lightly.loss import NTXentLoss
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    torch.testing.assert_close(NTXentLoss(temperature=tau)(z0, z1), reference_ntxent(z0, z1, tau))


def test_new_methods_are_registered_and_take_options():
    m = methods.build("moco", tiny(), queue_size=256)
    assert isinstance(m, methods.MoCo) and m.queue.shape == (256, 128) and m.embedding_dim == 128
    assert methods.build("nnclr", tiny(), support_size=64, proj_dim=64).embedding_dim == 64
    assert methods.build("dcl", tiny()).name == "dcl"
    for name, cls in (("moco", methods.MoCo), ("nnclr", methods.NNCLR), ("dcl", methods.DCL)):
        assert cls.name == name and methods.METHODS[name] is cls


@pytest.mark.parametrize("cls, options, match", [
    (methods.MoCo, {"queue_size": -1}, "queue_size"),
    (methods.MoCo, {"queue_size": 2.5}, "queue_size"),
    (methods.MoCo, {"temperature": 0}, "temperature"),
    (methods.MoCo, {"momentum": 1.5}, "momentum"),
    (methods.NNCLR, {"support_size": 0}, "support_size"),
    (methods.NNCLR, {"temperature": -0.1}, "temperature"),
    (methods.DCL, {"temperature": 0}, "temperature"),
])
def test_new_methods_reject_bad_options(cls, options, match):
    with pytest.raises(ValueError, match=match):
        cls(tiny(), **options)


def _keys(m, x):
    with torch.no_grad():
        return m.key_projector(m.key_backbone(torch.cat(x))).chunk(2)


def test_moco_queue_holds_previous_keys_and_serves_as_negatives():
    import torch.nn.functional as F
    from lightly.loss import NTXentLoss
    m = methods.MoCo(tiny(), queue_size=32, proj_dim=16)
    bank = m.criterion.memory_bank
    xa, xb = views(seed=0), views(seed=1)
    m.loss(xa)  # enqueues the 2B = 16 keys of both views: view 1's, then view 0's
    ka0, ka1 = _keys(m, xa)
    torch.testing.assert_close(m.queue[:16], F.normalize(torch.cat([ka1, ka0]), dim=1))
    assert int(bank.bank_ptr) == 16
    before = m.queue.clone()
    loss = m.loss(xb)
    # the second step saw the first step's keys as negatives, in both halves of the symmetric loss
    with torch.no_grad():
        q0, q1 = m.projector(m.backbone(torch.cat(xb))).chunk(2)
    kb0, kb1 = _keys(m, xb)
    ref = NTXentLoss(temperature=m.temperature, memory_bank_size=(32, 16))
    ref.memory_bank.bank.copy_(before)
    expected = 0.5 * (ref(q0, kb1) + ref(q1, kb0))  # detached queries: ref's bank is not updated
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(m.queue[:16], before[:16])
    torch.testing.assert_close(m.queue[16:], F.normalize(torch.cat([kb1, kb0]), dim=1))
    assert int(bank.bank_ptr) == 0  # full: wraps around
    with torch.no_grad():  # scoring without gradients leaves the queue alone
        m.loss(views(seed=2))
    torch.testing.assert_close(m.queue[16:], F.normalize(torch.cat([kb1, kb0]), dim=1))


def test_moco_without_queue_uses_in_batch_negatives():
    m = methods.MoCo(tiny(), queue_size=0)
    assert m.queue.numel() == 0
    x = views()
    loss = m.loss(x)
    loss.backward()
    assert torch.isfinite(loss) and m.backbone.net[1].weight.grad is not None
    with torch.no_grad():
        q0, q1 = m.projector(m.backbone(torch.cat(x))).chunk(2)
    k0, k1 = _keys(m, x)
    expected = 0.5 * (reference_ntxent(q0, k1, 0.2) + reference_ntxent(q1, k0, 0.2))
    torch.testing.assert_close(loss, expected)


def test_nnclr_positives_are_nearest_neighbours_from_the_support_set():
    m = methods.NNCLR(tiny(), support_size=16, proj_dim=16)
    bank = m.support
    xa, xb = views(seed=0), views(seed=1)

    def z_and_p(x):
        with torch.no_grad():
            z0, z1 = m.projector(m.backbone(torch.cat(x))).chunk(2)
            return (z0, z1), (m.predictor(z0), m.predictor(z1))

    m.loss(xa)  # enqueues view 0's projections
    (za0, _), _ = z_and_p(xa)
    torch.testing.assert_close(bank.bank[:8], za0)
    before = bank.bank.clone()
    loss = m.loss(xb)
    (z0, z1), (p0, p1) = z_and_p(xb)

    def nearest(z):  # both lookups use the support set as it was before the step
        sim = torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(before, dim=1).T
        return before[sim.argmax(1)]

    expected = 0.5 * (reference_ntxent(nearest(z0), p1, 0.1) + reference_ntxent(nearest(z1), p0, 0.1))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(bank.bank[8:], z0)
    # the support set is now full of projections: every neighbour is one of them
    zc = z_and_p(views(seed=2))[0][0]
    nn_ = m.nearest_neighbour(zc)
    stored = torch.cat([za0, z0])
    assert all(any(torch.equal(row, s) for s in stored) for row in nn_)
    assert not nn_.requires_grad


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")  # lightly's DCLWLoss
def test_dcl_loss_is_lightly_dcl_and_differs_from_simclr():
    from lightly.loss import DCLLoss, DCLWLoss, NTXentLoss
    x = views()
    m = methods.DCL(tiny(), temperature=0.2).eval()
    z0, z1 = m.embedding(x[0]), m.embedding(x[1])
    loss = m.loss(x)
    torch.testing.assert_close(loss, DCLLoss(temperature=0.2)(z0, z1))
    # the positive is out of the denominator: always below NT-Xent on the same embeddings
    assert loss < NTXentLoss(temperature=0.2)(z0, z1) - 1e-3
    w = methods.DCL(tiny(), weighted=True).eval()
    assert isinstance(w.criterion, DCLWLoss)
    torch.testing.assert_close(w.loss(x), DCLWLoss(temperature=0.1)(w.embedding(x[0]), w.embedding(x[1])))


# --- the package is organised by family -----------------------------------

def test_methods_live_in_their_family_module():
    from cookbook.methods import cca, contrastive, distillation, mim
    families = {contrastive: {"simclr", "moco", "nnclr", "dcl"}, distillation: {"byol", "simsiam", "dino"},
                cca: {"vicreg", "barlowtwins", "swav", "wmse"}, mim: {"mae", "simmim"}}
    for module, names in families.items():
        assert {methods.METHODS[n].__module__ for n in names} == {module.__name__}
    assert set(methods.METHODS) == set().union(*families.values())


# --- SimSiam ---------------------------------------------------------------

def test_simsiam_loss_is_symmetric_negative_cosine_with_stop_gradient():
    import torch.nn.functional as F
    m = methods.SimSiam(tiny()).eval()
    x = views()
    with torch.no_grad():
        z0, z1 = m.embedding(x[0]), m.embedding(x[1])
        p0, p1 = m.predictor(z0), m.predictor(z1)
    expected = -0.5 * (F.cosine_similarity(p0, z1).mean() + F.cosine_similarity(p1, z0).mean())
    torch.testing.assert_close(m.loss(x), expected)


def test_simsiam_target_gets_no_gradient_unless_asked():
    torch.manual_seed(0)
    a, b = methods.SimSiam(tiny()), methods.SimSiam(tiny(), stop_gradient=False)
    b.load_state_dict(a.state_dict())
    x = views()
    for m in (a, b):
        m.loss(x).backward()
    assert not torch.allclose(next(a.projector.parameters()).grad, next(b.projector.parameters()).grad)
    assert a._ema_pairs == []  # no teacher


def test_simsiam_without_predictor_matches_the_embeddings_themselves():
    import torch.nn.functional as F
    m = methods.SimSiam(tiny(), predictor=False).eval()
    assert isinstance(m.predictor, nn.Identity) and m.fixed_lr_modules() == [m.predictor]
    x = views()
    with torch.no_grad():
        z0, z1 = m.embedding(x[0]), m.embedding(x[1])
    torch.testing.assert_close(m.loss(x), -F.cosine_similarity(z0, z1).mean())


def test_simsiam_heads_are_the_papers():
    m = methods.SimSiam(tiny())  # dim 32: projector 128-128-128, predictor 128-32-128
    assert [l.out_features for l in m.projector.modules() if isinstance(l, nn.Linear)] == [128, 128, 128]
    assert [l.out_features for l in m.predictor.modules() if isinstance(l, nn.Linear)] == [32, 128]
    assert isinstance(list(m.projector.modules())[-1], nn.BatchNorm1d)  # batch norm on the output too


def test_simsiam_predictor_learning_rate_is_not_decayed():
    from cookbook import data
    from cookbook.train import fit
    ds = data.load("shapes", subset=64, test_subset=16, image_size=16)
    m = methods.SimSiam(models.resnet10(2))
    assert m.fixed_lr_modules() == [m.predictor]
    seen = {}
    original = m.after_step

    def spy(step, total):
        seen[step] = [(g["fixed_lr"], g["lr"]) for g in spy.opt.param_groups]
        original(step, total)

    import torch.optim
    real_sgd = torch.optim.SGD

    def capture(*a, **k):
        spy.opt = real_sgd(*a, **k)
        return spy.opt

    m.after_step = spy
    torch.optim.SGD = capture
    try:
        fit(m, ds, steps=4, batch_size=16, lr=0.1, lr_rule="none", warmup_epochs=0, progress=False, log=False)
    finally:
        torch.optim.SGD = real_sgd
    last = seen[3]
    assert {lr for fixed, lr in last if fixed} == {0.1}  # held at the peak
    assert all(lr < 0.1 for fixed, lr in last if not fixed)  # the rest decays
    assert methods.SimSiam(tiny(), fixed_predictor_lr=False).fixed_lr_modules() == []


# --- VICReg ----------------------------------------------------------------

def reference_vicreg(z0, z1, lam=25.0, mu=25.0, nu=1.0, eps=1e-4):
    """VICReg's loss from the paper's equations (Bardes et al., 2022, Eqs. 1-6), with the
    variance term averaged over the two branches as in the authors' code (and lightly)."""
    n, d = z0.shape
    invariance = ((z0 - z1) ** 2).sum(1).mean() / d  # mean squared error

    def variance(z):
        return torch.relu(1 - (z.var(0) + eps).sqrt()).mean()

    def covariance(z):
        z = z - z.mean(0)
        cov = z.T @ z / (n - 1)
        return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d

    return lam * invariance + mu * (variance(z0) + variance(z1)) / 2 + nu * (covariance(z0) + covariance(z1))


def test_vicreg_loss_matches_the_papers_equation():
    m = methods.VICReg(tiny(), lambda_=10.0, mu=20.0, nu=2.0).eval()
    x = views(n=16)
    with torch.no_grad():
        z0, z1 = m.embedding(x[0]), m.embedding(x[1])
    torch.testing.assert_close(m.loss(x), reference_vicreg(z0, z1, 10.0, 20.0, 2.0), rtol=1e-4, atol=1e-5)


def test_vicreg_options():
    m = methods.VICReg(tiny())
    assert m.embedding_dim == 128 and m.embedding(torch.rand(4, 3, 32, 32)).shape == (4, 128)
    assert [l.out_features for l in m.projector.modules() if isinstance(l, nn.Linear)] == [128, 128, 128]
    with pytest.raises(ValueError, match="mu"):
        methods.VICReg(tiny(), mu=-1)
    with pytest.raises(ValueError, match="expander"):
        methods.VICReg(tiny(), proj_depth=0)


# --- Barlow Twins ------------------------------------------------------------

def reference_barlow(z0, z1, lam):
    """Barlow Twins' loss from the paper's Eqs. 1-2: each dimension standardised over the
    batch (biased variance), C = Z0^T Z1 / N, sum (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2."""
    def standardise(z):
        return (z - z.mean(0)) / (z.var(0, unbiased=False) + 1e-5).sqrt()
    c = standardise(z0).T @ standardise(z1) / len(z0)
    on = (1 - c.diagonal()).pow(2).sum()
    off = c.pow(2).sum() - c.diagonal().pow(2).sum()
    return on + lam * off


def test_barlow_twins_loss_matches_the_papers_equation():
    m = methods.BarlowTwins(tiny(), lambda_=0.01).eval()
    x = views(n=16)
    with torch.no_grad():
        z0, z1 = m.embedding(x[0]), m.embedding(x[1])
    torch.testing.assert_close(m.loss(x), reference_barlow(z0, z1, 0.01), rtol=1e-4, atol=1e-4)


def test_barlow_twins_identical_decorrelated_views_score_near_zero_and_collapse_scores_high():
    from lightly.loss import BarlowTwinsLoss
    loss = BarlowTwinsLoss(lambda_param=5e-3)
    q, _ = torch.linalg.qr(torch.randn(512, 16))  # 16 orthogonal, centred-ish columns
    z = (q - q.mean(0)) * 512 ** 0.5
    assert float(loss(z, z)) < 0.2
    collapsed = torch.randn(512, 1).repeat(1, 16) + 1e-3 * torch.randn(512, 16)
    assert float(loss(collapsed, collapsed)) > 16 * 15 * 5e-3 * 0.9  # every off-diagonal term is ~1


def test_barlow_twins_options():
    m = methods.BarlowTwins(tiny(), proj_dim=64, proj_hidden=48)
    assert [l.out_features for l in m.projector.modules() if isinstance(l, nn.Linear)] == [48, 48, 64]
    assert m.embedding_dim == 64 and m.embedding(torch.rand(4, 3, 32, 32)).shape == (4, 64)
    with pytest.raises(ValueError, match="lambda_"):
        methods.BarlowTwins(tiny(), lambda_=-1)
    with pytest.raises(ValueError, match="projector"):
        methods.BarlowTwins(tiny(), proj_depth=0)


# --- SwAV ------------------------------------------------------------------

def reference_codes(scores, eps=0.05, iterations=3):
    """Sinkhorn-Knopp as in the SwAV paper's Algorithm 1: Q = exp(s / eps)^T, then
    alternately normalise prototypes' rows to 1/P and images' columns to 1/B."""
    q = torch.exp(scores / eps).T
    q /= q.sum()
    p, b = q.shape
    for _ in range(iterations):
        q /= q.sum(1, keepdim=True) * p
        q /= q.sum(0, keepdim=True) * b
    return (q * b).T


def test_swav_loss_is_the_swapped_prediction_of_sinkhorn_codes():
    import torch.nn.functional as F
    m = methods.SwAV(tiny(), n_prototypes=10, temperature=0.1).eval()
    x = views(n=16)
    loss = m.loss(x)  # normalises the prototypes first
    with torch.no_grad():
        s0, s1 = (m.prototypes(m.embedding(v)) for v in x)
    q0, q1 = reference_codes(s0), reference_codes(s1)
    expected = -0.5 * ((q0 * F.log_softmax(s1 / 0.1, 1)).sum(1).mean() + (q1 * F.log_softmax(s0 / 0.1, 1)).sum(1).mean())
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)
    # codes are balanced: each prototype gets about B / P of the batch
    torch.testing.assert_close(reference_codes(s0, iterations=50).sum(0), torch.full((10,), 1.6), rtol=1e-3, atol=1e-3)
    norms = m.prototypes.heads[0].weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_swav_multi_crop_and_views():
    m = methods.SwAV(tiny(), n_prototypes=8)
    big = views(n=8)
    small = [torch.rand(8, 3, 16, 16) for _ in range(3)]
    loss = m.loss(big + small)
    assert torch.isfinite(loss)
    loss.backward()
    assert m.prototypes.heads[0].weight.grad is not None
    assert len(m.default_views(32)) == 8
    with pytest.raises(ValueError, match="2 global views"):
        m.loss(big[:1])
    with pytest.raises(ValueError, match="2 global views"):
        m.loss([big[0], small[0]])


def test_swav_queue_fills_then_joins_the_sinkhorn_step():
    torch.manual_seed(0)
    m = methods.SwAV(tiny(), n_prototypes=8, queue_length=16)
    x = views(n=8)
    m.loss(x)
    assert int(m.queue_filled) == 8 and m.queue[:, 8:].abs().sum() == 0  # half full: not used yet
    m.loss(x)
    assert int(m.queue_filled) == 16
    torch.testing.assert_close(m.queue.norm(dim=2), torch.ones(2, 16))  # unit embeddings
    plain = methods.SwAV(tiny(), n_prototypes=8)
    plain.load_state_dict(m.state_dict(), strict=False)
    m.eval(), plain.eval()  # same batch-norm statistics; eval also stops pushing
    before = m.queue.clone()
    assert not torch.allclose(m.loss(x), plain.loss(x))  # the queue changed the codes
    torch.testing.assert_close(m.queue, before)


def test_swav_prototypes_frozen_for_the_first_steps():
    m = methods.SwAV(tiny(), n_prototypes=8, freeze_prototypes_steps=2)
    m.loss(views()).backward()
    assert m.prototypes.heads[0].weight.grad is None
    m.after_step(0, 10), m.after_step(1, 10)
    m.loss(views()).backward()
    assert m.prototypes.heads[0].weight.grad is not None


def test_swav_options_are_checked():
    for bad in ({"n_prototypes": 1}, {"temperature": 0}, {"sinkhorn_iterations": 0}, {"queue_length": -1},
                {"sinkhorn_epsilon": -0.1}):
        with pytest.raises(ValueError):
            methods.SwAV(tiny(), **bad)


# --- W-MSE -----------------------------------------------------------------

def whiten(z):
    """The W-MSE paper's whitening: centre, then multiply by the inverse Cholesky factor
    of the (unbiased) covariance, so the result has identity covariance."""
    z = z - z.mean(0)
    cov = z.T @ z / (len(z) - 1)
    return z @ torch.linalg.inv(torch.linalg.cholesky(cov)).T


def test_wmse_loss_is_the_mse_of_whitened_normalised_embeddings():
    import torch.nn.functional as F
    m = methods.WMSE(tiny(), proj_hidden=32, proj_dim=8, w_size=16).eval()
    m.criterion.train()  # whiten with the batch's statistics (eval would use running ones)
    x = views(n=16)
    with torch.no_grad():
        z0, z1 = m.embedding(x[0]), m.embedding(x[1])
    w0, w1 = whiten(z0), whiten(z1)
    torch.testing.assert_close(w0.T @ w0 / 15, torch.eye(8), rtol=1e-3, atol=1e-3)
    expected = (F.normalize(w0) - F.normalize(w1)).pow(2).sum(1).mean()
    torch.testing.assert_close(m.loss(x), expected, rtol=1e-3, atol=1e-3)


def test_wmse_sizes_are_checked_before_training():
    with pytest.raises(ValueError, match="2 \\* proj_dim"):
        methods.WMSE(tiny(), proj_dim=64, w_size=100)
    m = methods.WMSE(tiny(), proj_hidden=32, proj_dim=8, w_size=16)
    with pytest.raises(ValueError, match="multiple"):
        m.loss(views(n=24))
    with pytest.raises(ValueError, match="2 views"):
        m.loss(views(n=16)[:1])
    loss = m.loss(views(n=32))  # two sub-batches of 16
    loss.backward()
    assert torch.isfinite(loss) and m.backbone.net[1].weight.grad is not None


# --- MAE -------------------------------------------------------------------

def tiny_vit(image_size=16, patch_size=4):
    return models.vit_tiny(image_size=image_size, patch_size=patch_size, dim=32, depth=1, heads=2, pool="mean")


@pytest.mark.parametrize("ratio,patches", [(0.75, 16), (0.5, 64), (0.9, 49), (0.3, 10)])
def test_patch_mask_hides_exactly_round_ratio_times_patches(ratio, patches):
    keep, masked = methods.random_patch_mask(32, patches, ratio, torch.Generator().manual_seed(0))
    assert masked.shape == (32, round(ratio * patches)) and keep.shape == (32, patches - round(ratio * patches))
    together = torch.cat([keep, masked], 1).sort(1).values
    assert torch.equal(together, torch.arange(patches).expand(32, -1))  # disjoint, and all patches
    assert len({tuple(r.tolist()) for r in masked.sort(1).values}) > 1  # a different mask per image


def test_patch_mask_rejects_ratios_that_hide_nothing_or_everything():
    for ratio in (0.0, 1.0, 0.01):
        with pytest.raises(ValueError, match="ratio"):
            methods.random_patch_mask(2, 16, ratio)


def test_mae_loss_is_mse_on_masked_patches_only():
    torch.manual_seed(0)
    m = methods.MAE(tiny_vit(), mask_ratio=0.75, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    x = torch.rand(4, 3, 16, 16)
    prediction, target, masked = m.reconstruct(x, torch.Generator().manual_seed(1))
    assert prediction.shape == target.shape == (4, 12, 48) and masked.shape == (4, 12)
    full = m.targets(x)
    torch.testing.assert_close(target, torch.stack([full[i, masked[i]] for i in range(4)]))
    # norm_pix: each target patch has mean 0 and variance 1
    torch.testing.assert_close(target.mean(-1), torch.zeros(4, 12), atol=1e-5, rtol=0)
    loss = m.loss([x])
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert m.backbone.vit.conv_proj.weight.grad is not None  # the encoder the probes use is trained


def test_mae_encoder_sees_only_visible_patches():
    """Changing a masked patch's pixels cannot change the encoding of the visible ones."""
    torch.manual_seed(0)
    m = methods.MAE(tiny_vit(), decoder_dim=16, decoder_depth=1, decoder_heads=2).eval()
    x = torch.rand(2, 3, 16, 16)
    keep, masked = methods.random_patch_mask(2, 16, 0.75, torch.Generator().manual_seed(0))
    idx = torch.cat([torch.zeros(2, 1, dtype=torch.long), keep + 1], 1)
    a = m.encoder.encode(m.backbone.normalize(x), idx_keep=idx)
    y = x.clone()
    row, col = divmod(int(masked[0, 0]), 4)
    y[0, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4] = 0.5
    b = m.encoder.encode(m.backbone.normalize(y), idx_keep=idx)
    torch.testing.assert_close(a, b)


def test_mae_needs_a_vit_and_one_view():
    with pytest.raises(ValueError, match="vit_tiny"):
        methods.MAE(tiny())
    m = methods.MAE(tiny_vit(), decoder_dim=16, decoder_depth=1, decoder_heads=2)
    with pytest.raises(ValueError, match="1 view"):
        m.loss(views(n=2))
    assert len(m.default_views(16)) == 1
    assert m.representation(torch.rand(3, 3, 16, 16)).shape == (3, 32)


# --- SimMIM ----------------------------------------------------------------

def test_simmim_loss_is_l1_on_masked_raw_pixels_only():
    torch.manual_seed(0)
    m = methods.SimMIM(tiny_vit(), mask_ratio=0.5)
    x = torch.rand(4, 3, 16, 16)
    prediction, target, masked = m.reconstruct(x, torch.Generator().manual_seed(1))
    assert prediction.shape == target.shape == (4, 8, 48) and masked.shape == (4, 8)
    # raw pixels by default: the target is the masked patches of x itself
    patches = x.reshape(4, 3, 4, 4, 4, 4).permute(0, 2, 4, 3, 5, 1).reshape(4, 16, 48)
    torch.testing.assert_close(target, torch.stack([patches[i, masked[i]] for i in range(4)]))
    # the loss is the mean absolute error of those patches, nothing else
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    p, t, _ = m.reconstruct(x, g)
    torch.testing.assert_close(nn.functional.l1_loss(p, t), (p - t).abs().mean())
    loss = m.loss([x])
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert m.backbone.vit.conv_proj.weight.grad is not None  # the encoder the probes use is trained
    assert m.encoder.mask_token.grad is not None  # the mask token is learnt


def test_simmim_replaces_masked_patches_by_the_mask_token():
    """A masked patch's pixels cannot reach the encoder: changing them leaves every
    output token unchanged, while changing a visible patch does not."""
    torch.manual_seed(0)
    m = methods.SimMIM(tiny_vit(), mask_ratio=0.5).eval()
    x = torch.rand(1, 3, 16, 16)
    _, masked = methods.random_patch_mask(1, 16, 0.5, torch.Generator().manual_seed(0))
    encode = lambda images: m.encoder.encode(m.backbone.normalize(images), idx_mask=masked + 1)

    def with_patch(index):
        y = x.clone()
        row, col = divmod(int(index), 4)
        y[0, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4] = 0.5
        return y

    visible = sorted(set(range(16)) - set(masked[0].tolist()))[0]
    torch.testing.assert_close(encode(x), encode(with_patch(masked[0, 0])))
    assert not torch.allclose(encode(x), encode(with_patch(visible)))
    assert encode(x).shape == (1, 17, 32)  # every position, the class token first


def test_simmim_needs_a_vit_and_one_view():
    with pytest.raises(ValueError, match="vit_tiny"):
        methods.SimMIM(tiny())
    with pytest.raises(ValueError, match="ratio"):
        methods.SimMIM(tiny_vit(), mask_ratio=1.0)
    m = methods.build("simmim", tiny_vit())
    with pytest.raises(ValueError, match="1 view"):
        m.loss(views(n=2))
    assert m.mask_ratio == 0.6 and not m.norm_pix  # the paper's defaults
    assert m.representation(torch.rand(3, 3, 16, 16)).shape == (3, 32)


@pytest.mark.parametrize("name", ["mae", "simmim"])
def test_reconstruction_images_keep_the_visible_patches_and_grey_the_hidden(name):
    torch.manual_seed(0)
    m = methods.build(name, tiny_vit(), mask_ratio=0.75, **({"decoder_dim": 16, "decoder_depth": 1,
                                                              "decoder_heads": 2} if name == "mae" else {}))
    x = torch.rand(3, 3, 16, 16) * 0.3 + 0.6  # never grey, so a grey patch was masked
    masked, rebuilt = reconstruction_images(m, x, seed=0)
    assert masked.shape == rebuilt.shape == x.shape and m.training  # its mode is restored
    tiles = lambda im: im.reshape(3, 3, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(3, 16, -1)
    grey = (tiles(masked) == 0.5).all(-1)  # (B, P): which patches were hidden
    assert (grey.sum(1) == 12).all()
    torch.testing.assert_close(tiles(rebuilt)[~grey], tiles(x)[~grey])  # visible: the input itself
    assert 0 <= rebuilt.min() and rebuilt.max() <= 1


# --- DINO ------------------------------------------------------------------

def multi_crop(n=8, n_local=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ([torch.rand(n, 3, 32, 32, generator=g) for _ in range(2)]
            + [torch.rand(n, 3, 16, 16, generator=g) for _ in range(n_local)])


def test_dino_interface_and_multi_crop_views():
    m = methods.build("dino", tiny(), output_dim=64)
    x = multi_crop()
    loss = m.loss(x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert m.backbone.net[1].weight.grad is not None
    assert all(p.grad is None for p in m.teacher_backbone.parameters())
    assert m.representation(x[0]).shape == (8, 32) and m.embedding(x[2]).shape == (8, 64)
    sizes = [v.size for v in m.default_views(32).specs]
    assert sizes[:2] == [32, 32] and len(sizes) > 2 and set(sizes[2:]) == {16}


def test_dino_loss_is_lightly_dino_loss_global_teacher_against_every_student_view():
    from lightly.loss import DINOLoss
    m = methods.DINO(tiny(), output_dim=64, teacher_temp=0.05, student_temp=0.2).eval()
    x = multi_crop()
    with torch.no_grad():
        student = [m.embedding(v) for v in x]
        teacher = [m.teacher_projector(m.teacher_backbone(v)) for v in x[:2]]
        expected = DINOLoss(64, teacher_temp=0.05, student_temp=0.2)(teacher, student)
        torch.testing.assert_close(m.loss(x), expected)
        # the same pairs written out: each global teacher view against every other view
        terms = [-(torch.softmax(t / 0.05, -1) * torch.log_softmax(s / 0.2, -1)).sum(-1).mean()
                 for i, t in enumerate(teacher) for j, s in enumerate(student) if i != j]
        torch.testing.assert_close(expected, torch.stack(terms).mean())


def test_dino_centering_switch():
    on, off = methods.DINO(tiny(), output_dim=64), methods.DINO(tiny(), output_dim=64, centering=False)
    for m in (on, off):
        m.loss(multi_crop())
    assert on.criterion.center.abs().sum() > 0
    assert off.criterion.center.abs().sum() == 0


def test_dino_teacher_temperature_warms_up_linearly():
    m = methods.DINO(tiny(), output_dim=64, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_fraction=0.5)
    assert m.teacher_temp_now() == pytest.approx(0.04)
    m.after_step(24, 100)  # a quarter of the run done: half the warm-up
    assert m.teacher_temp_now() == pytest.approx(0.055)
    m.after_step(79, 100)
    assert m.teacher_temp_now() == pytest.approx(0.07)


def test_forward_views_batches_by_size_and_keeps_order():
    from cookbook.methods.base import forward_views
    net = tiny().eval()
    x = multi_crop(n_local=3)
    x = [x[2], x[0], x[3], x[1], x[4]]
    calls = []
    with torch.no_grad():
        out = forward_views(lambda v: calls.append(v.shape[0]) or net(v), x)
        for got, v in zip(out, x):
            torch.testing.assert_close(got, net(v))
    assert calls == [24, 16]  # one pass per image size


@pytest.mark.parametrize("options, match", [
    ({"output_dim": 0}, "output_dim"), ({"teacher_temp": 0}, "temperature"),
    ({"student_temp": -1}, "temperature"), ({"warmup_fraction": 1.5}, "warmup_fraction"),
    ({"center_momentum": 2}, "center_momentum"), ({"momentum": 1.2}, "momentum"),
])
def test_dino_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        methods.DINO(tiny(), **options)


def test_dino_needs_two_global_views_of_one_size():
    m = methods.DINO(tiny(), output_dim=64)
    x = multi_crop()
    with pytest.raises(ValueError, match="2 global views"):
        m.loss(x[:1])
    with pytest.raises(ValueError, match="2 global views"):
        m.loss([x[0], x[2]])
