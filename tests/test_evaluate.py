"""kNN, linear probe, validation split and feature extraction on tiny stand-ins."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cookbook import evaluate, metrics


class TinyModel(nn.Module):
    """Stand-in SSL model: the BatchNorm makes train and eval mode give different outputs."""

    def __init__(self, dim=8, out=4):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, dim), nn.BatchNorm1d(dim))
        self.projector = nn.Linear(dim, out)

    def representation(self, x):
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        return self.backbone(x)

    def embedding(self, x):
        return self.projector(self.representation(x))


def tiny_dataset(n_train=120, n_test=40, n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = {
        split: (torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8),
                torch.randint(0, n_classes, (n,), generator=g))
        for split, n in (("train", n_train), ("test", n_test))
    }
    return SimpleNamespace(train_x=data["train"][0], train_y=data["train"][1], test_x=data["test"][0],
                           test_y=data["test"][1], classes=[f"c{i}" for i in range(n_classes)],
                           split=lambda name: data[name])


def clusters(n, n_classes=4, dim=16, spread=0.3, seed=0):
    """Well-separated Gaussian clusters around orthogonal directions."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    centres = torch.eye(dim)[:n_classes] * 3
    return centres[y] + spread * torch.randn(n, dim, generator=g), y


# features -------------------------------------------------------------------


def test_features_shape_matches_model_and_restores_modes():
    model, data = TinyModel(), tiny_dataset()
    model.train()
    model.projector.eval()  # a submodule deliberately left in eval mode
    out = evaluate.features(model, data, "test", "embedding", batch_size=7)
    assert out.shape == (40, 4) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert model.training and model.backbone[2].training and not model.projector.training
    model.eval()
    with torch.no_grad():
        expected = model.embedding(data.test_x.float() / 255)
    torch.testing.assert_close(out, expected)
    assert not model.training  # eval mode restored as eval
    torch.testing.assert_close(evaluate.features(model, data, "train", batch_size=1000),
                               evaluate.features(model, data, "train", batch_size=13))


def test_features_rejects_unknown_which_and_split():
    model, data = TinyModel(), tiny_dataset()
    with pytest.raises(ValueError, match="which"):
        evaluate.features(model, data, "train", "logits")
    with pytest.raises(ValueError, match="split"):
        evaluate.features(model, data, "val")


def test_pixels_are_flattened_images_in_unit_range():
    data = tiny_dataset()
    px = evaluate.pixels(data, "test")
    assert px.shape == (40, 3 * 4 * 4) and px.dtype == torch.float32
    assert px[3, 5] == data.test_x[3].flatten()[5].item() / 255  # pixel order of flatten(): C, H, W
    assert 0 <= px.min() and px.max() <= 1
    with pytest.raises(ValueError, match="split"):
        evaluate.pixels(data, "val")


# kNN ------------------------------------------------------------------------


def test_knn_separable_clusters_and_random_labels():
    x, y = clusters(400)
    assert evaluate.knn_accuracy(x[:300], y[:300], x[300:], y[300:], k=20) == 1.0
    g = torch.Generator().manual_seed(1)
    noise, random_y = torch.randn(1000, 16, generator=g), torch.randint(0, 4, (1000,), generator=g)
    accuracy = evaluate.knn_accuracy(noise[:600], random_y[:600], noise[600:], random_y[600:], k=20)
    assert abs(accuracy - 0.25) < 0.08


def test_knn_weighted_vote_by_hand():
    # Query (1, 0). Neighbours: one of class 0 at cosine 1, two of class 1 at cosine 0.6.
    train = torch.tensor([[2.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query, truth = torch.tensor([[5.0, 0.0]]), torch.tensor([0])
    # T = 0.1: class 0 gets e^10 ≈ 22026, class 1 gets 2·e^6 ≈ 807 -> class 0.
    assert evaluate.knn_accuracy(train, labels, query, truth, k=3, temperature=0.1) == 1.0
    # T = 10: class 0 gets e^0.1 ≈ 1.11, class 1 gets 2·e^0.06 ≈ 2.12 -> class 1.
    assert evaluate.knn_accuracy(train, labels, query, truth, k=3, temperature=10.0) == 0.0
    # k = 4 adds the opposite point (cosine −1) to class 0: e^−0.1 + e^0.1 ≈ 2.01 < 2.12 -> still class 1.
    assert evaluate.knn_accuracy(train, labels, query, truth, k=4, temperature=10.0) == 0.0


def test_knn_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(500, 8, generator=g), torch.randint(0, 5, (500,), generator=g)
    whole = evaluate.knn_accuracy(x[:400], y[:400], x[400:], y[400:], k=15, chunk_size=100)
    assert evaluate.knn_accuracy(x[:400], y[:400], x[400:], y[400:], k=15, chunk_size=7) == whole
    assert 0.0 < whole < 1.0


def test_knn_k_larger_than_train_set_is_clamped_with_warning():
    x, y = clusters(60)
    with pytest.warns(UserWarning, match="exceeds"):
        clamped = evaluate.knn_accuracy(x[:20], y[:20], x[20:], y[20:], k=200)
    assert clamped == evaluate.knn_accuracy(x[:20], y[:20], x[20:], y[20:], k=20)


# validation split -----------------------------------------------------------


def test_validation_split_is_disjoint_stratified_and_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20 + [3])
    train_idx, val_idx = evaluate.validation_split(labels, 0.2, seed=0)
    assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(len(labels)))
    assert torch.bincount(labels[val_idx], minlength=4).tolist() == [10, 6, 4, 0]  # single sample stays in train
    again, _ = evaluate.validation_split(labels, 0.2, seed=0)
    other, _ = evaluate.validation_split(labels, 0.2, seed=1)
    assert torch.equal(train_idx, again) and not torch.equal(train_idx, other)
    with pytest.raises(ValueError):
        evaluate.validation_split(labels, 1.0)


def test_sample_per_class():
    labels = torch.tensor([0] * 10 + [1] * 5)
    idx = evaluate.sample_per_class(labels, 3, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [3, 3] and len(set(idx.tolist())) == 6
    with pytest.raises(ValueError, match="fewer"):
        evaluate.sample_per_class(labels, 6)


# linear probe ---------------------------------------------------------------

SMALL = dict(epochs=10, lrs=(0.01, 0.1), weight_decays=(0.0, 1e-2))


def test_linear_probe_separable_and_shuffled_labels():
    x, y = clusters(600, spread=0.5)
    assert evaluate.linear_probe(x[:400], y[:400], x[400:], y[400:], **SMALL) > 0.97
    shuffled = y[torch.randperm(600, generator=torch.Generator().manual_seed(3))]
    assert abs(evaluate.linear_probe(x[:400], shuffled[:400], x[400:], shuffled[400:], **SMALL) - 0.25) < 0.1


def test_linear_probe_chooses_hyper_parameters_without_test_labels():
    x, y = clusters(600, spread=1.0)
    right = evaluate.linear_probe(x[:400], y[:400], x[400:], y[400:], return_details=True, **SMALL)
    wrong = evaluate.linear_probe(x[:400], y[:400], x[400:], (y[400:] + 1) % 4, return_details=True, **SMALL)
    assert (wrong["lr"], wrong["weight_decay"], wrong["grid"]) == (right["lr"], right["weight_decay"], right["grid"])
    assert len(right["grid"]) == 4
    assert right["test_accuracy"] > 0.85 and wrong["test_accuracy"] < 0.2  # the test labels are used to score only


def test_linear_probe_low_label_regime_is_seeded():
    x, y = clusters(800, spread=0.5)
    first = evaluate.linear_probe(x[:600], y[:600], x[600:], y[600:], labels_per_class=5, seed=0, **SMALL)
    assert first == evaluate.linear_probe(x[:600], y[:600], x[600:], y[600:], labels_per_class=5, seed=0, **SMALL)
    assert first > 0.8
    with pytest.raises(ValueError, match="fewer"):
        evaluate.linear_probe(x[:600], y[:600], x[600:], y[600:], labels_per_class=1000, **SMALL)


# evaluate_model -------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:k = .* exceeds")
def test_evaluate_model_returns_floats_and_nan_alpha_for_small_dimension():
    model, data = TinyModel(), tiny_dataset()
    with pytest.warns(UserWarning, match="alpha"):
        result = evaluate.evaluate_model(model, data, val_fraction=0.25)
    assert set(result) == {"knn_val", "knn_test", "linear_val", "linear_test", "rankme", "rankme_rep", "alpha"}
    assert all(type(v) is float for v in result.values())
    assert all(0 <= result[key] <= 1 for key in ("knn_val", "knn_test", "linear_val", "linear_test"))
    assert 1 <= result["rankme"] <= 4 and math.isnan(result["alpha"])

    train_f, test_f = (evaluate.features(model, data, split) for split in ("train", "test"))
    fit_idx, val_idx = evaluate.validation_split(data.train_y, 0.25, seed=0)
    knn_val = evaluate.knn_accuracy(train_f[fit_idx], data.train_y[fit_idx], train_f[val_idx], data.train_y[val_idx])
    assert result["knn_val"] == knn_val
    probe = evaluate.linear_probe(train_f, data.train_y, test_f, data.test_y, val_fraction=0.25, seed=0,
                                  return_details=True)
    assert result["linear_test"] == pytest.approx(probe["test_accuracy"])
    # the probe's own validation accuracy: the best of its grid, on a split of the training images
    assert result["linear_val"] == pytest.approx(max(probe["grid"].values()))
    embedding = evaluate.features(model, data, "train", "embedding")
    assert result["rankme"] == pytest.approx(metrics.rankme(embedding), rel=1e-9)
    assert result["rankme_rep"] == pytest.approx(metrics.rankme(train_f), rel=1e-9)


# factor_probe ---------------------------------------------------------------


def factor_data(n=600, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g), torch.randn(n, d, generator=g)


def test_factor_probe_recovers_a_linearly_encoded_factor_and_not_a_missing_one():
    value, noise = factor_data()
    encoded = torch.cat([3 * value[:, None] + 0.01 * noise[:, :1], noise[:, 1:]], dim=1)
    assert evaluate.factor_probe(encoded[:500], value[:500], encoded[500:], value[500:]) > 0.99
    assert evaluate.factor_probe(noise[:500], value[:500], noise[500:], value[500:]) < 0.1


def test_factor_probe_circular_hue_wraps_around():
    hue, noise = factor_data()
    angle = 2 * math.pi * hue
    on_circle = torch.cat([angle.cos()[:, None], angle.sin()[:, None], noise[:, :4]], dim=1)
    assert evaluate.factor_probe(on_circle[:500], hue[:500], on_circle[500:], hue[500:], circular=True) > 0.99
    # the same features cannot give hue as a number on a line: 0.99 and 0.01 sit side by side
    assert evaluate.factor_probe(on_circle[:500], hue[:500], on_circle[500:], hue[500:]) < 0.9


def test_factor_probe_errors():
    value, noise = factor_data(n=40)
    with pytest.raises(ValueError, match="expected features"):
        evaluate.factor_probe(noise[:30], value[:20], noise[30:], value[30:])
    with pytest.raises(ValueError, match="at least 10"):
        evaluate.factor_probe(noise[:5], value[:5], noise[30:], value[30:])


def test_factor_probes_reads_every_factor_of_a_dataset_and_refuses_one_without():
    g = torch.Generator().manual_seed(0)
    data = tiny_dataset(n_train=200, n_test=60)
    x_train, x_test = data.train_x.float().mean((1, 2, 3)), data.test_x.float().mean((1, 2, 3))
    data.name = "tiny"
    # "brightness" is a linear function of the pixels; "noise" is independent of them
    data.factors = {"train": {"brightness": x_train, "noise": torch.rand(200, generator=g)},
                    "test": {"brightness": x_test, "noise": torch.rand(60, generator=g)}}
    from cookbook.methods import Method

    model = Method(nn.Flatten())  # the raw pixels, as the chapters' reference
    r2 = evaluate.factor_probes(model, data, factors=(("brightness", False), ("noise", False)))
    assert set(r2) == {"brightness", "noise"}
    assert r2["brightness"] > 0.99 and r2["noise"] < 0.2
    data.factors = None
    with pytest.raises(ValueError, match="no factors \\['hue'"):
        evaluate.factor_probes(model, data)


def test_nearest_neighbours_by_cosine_similarity():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    queries = torch.tensor([[5.0, 0.1], [-0.1, -1.0]])  # length does not matter, direction does
    assert evaluate.nearest_neighbours(bank, queries, k=2).tolist() == [[0, 2], [3, 0]]
    assert evaluate.nearest_neighbours(bank, queries, k=1).tolist() == [[0], [3]]
    with pytest.raises(ValueError, match="k must be"):
        evaluate.nearest_neighbours(bank, queries, k=5)
    with pytest.raises(ValueError, match="expected bank"):
        evaluate.nearest_neighbours(bank, queries[:, :1])
