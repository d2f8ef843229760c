"""End to end on CPU: SimCLR and BYOL on `shapes`, each sized to train in under 90 s
(the time is printed; speed is a benchmark matter, not an assertion), and SimCLR
must beat raw-pixel kNN on the same split by a margin that a broken pipeline
cannot reach: an untrained network scores below raw pixels, and a run whose
augmentation, optimiser or loss is broken does not learn the shape.

Margins are set from measurements (printed by this test; see the closing notes
of the package issue). SimCLR with a linear projector reached 0.500 against
0.227 for raw pixels on this split (496 steps, 74 s), so the test asks for the
issue's +15 points. With SimCLR's 2-layer projector the same run reached only
0.319: at a few hundred steps a linear projector learns much faster, as the
projector study of chapter 01 also measures. BYOL does not beat raw pixels at
this budget (kNN 0.13-0.23 over nine settings of learning rate, momentum,
projector and batch size, RankMe 3-6: partial collapse), so its test asserts
only that it trains within the budget and its loss falls.
"""

import pytest
import torch

from cookbook import augment, data, evaluate, methods, models
from cookbook.train import fit


@pytest.fixture(scope="module")
def shapes():
    return data.load("shapes", subset=4000, test_subset=1000, seed=0)


def knn(method, ds):
    return evaluate.knn_accuracy(evaluate.features(method, ds, "train"), ds.train_y,
                                 evaluate.features(method, ds, "test"), ds.test_y)


@pytest.mark.slow
def test_simclr_beats_raw_pixels_on_cpu(shapes, capsys):
    name, margin = "simclr", 0.15
    torch.manual_seed(0)
    method = methods.build(name, models.resnet18(8), proj_depth=1)
    # lightly's SimCLR defaults with crops of at least half the image
    views = augment.simclr(min_scale=0.5)
    untrained = knn(method, shapes)
    h = fit(method, shapes, epochs=8, batch_size=64, lr=0.3, views=views, progress=False, log=False)
    trained = knn(method, shapes)
    raw = evaluate.knn_accuracy(shapes.train_x.flatten(1).float(), shapes.train_y,
                                shapes.test_x.flatten(1).float(), shapes.test_y)
    with capsys.disabled():
        print(f"\n{name}: {h.wall_time_s:.0f} s, {h.steps} steps, loss {h.epochs[0]['loss']:.3f} -> "
              f"{h.final_loss:.3f}; kNN untrained {untrained:.3f}, raw pixels {raw:.3f}, trained {trained:.3f}")
    assert untrained < raw  # what a pipeline that learns nothing would score
    assert trained > raw + margin


@pytest.mark.slow
def test_byol_trains_on_cpu(shapes, capsys):
    torch.manual_seed(0)
    method = methods.build("byol", models.resnet18(8))
    h = fit(method, shapes, epochs=5, batch_size=64, lr=0.3, views=augment.byol(min_scale=0.5),
            progress=False, log=False)
    with capsys.disabled():
        print(f"\nbyol: {h.wall_time_s:.0f} s, {h.steps} steps, loss {h.epochs[0]['loss']:.3f} -> {h.final_loss:.3f}, "
              f"kNN {knn(method, shapes):.3f}")
    assert h.epochs[0]["loss"] - h.final_loss > 0.15  # measured: -0.53 -> -0.85 in 8 epochs
