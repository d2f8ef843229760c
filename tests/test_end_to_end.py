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
projector study of chapter 01 also measures.

BYOL does not beat raw pixels at this budget: over 38 settings of learning rate,
weight decay, EMA momentum, projector and predictor shape, predictor learning rate,
augmentation and optimiser (5 epochs each, 50-80 s) its kNN stayed between 0.13 and
0.24. Longer runs do not help: with weight decay 2e-3, kNN on the validation split
sat at 0.21-0.24 from epoch 2 to epoch 10 while the RankMe of the embedding fell
from 13 to 2.3. A 5-epoch run with that weight decay (kNN 0.24) has a representation
that predicts the shape's hue as well as raw pixels do (ridge R² 0.79 against 0.77):
it keeps the colour that a shape classifier must ignore. So its test asks what a
working BYOL does reach at this budget and a broken one does not: the loss falls and
the embedding does not collapse. RankMe of the trained embedding on the test split:
10.8, 9.4 and 16.8 for seeds 0-2; without stop-gradient (and no teacher) 1.9. On the
train split: untrained 2.3, predictor removed 4.8. The collapsed variants' losses
fall further than the working one's (to -0.97 and -1.00), so the loss alone proves
nothing about collapse.
"""

import pytest
import torch

from cookbook import augment, data, evaluate, methods, metrics, models
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
    raw = evaluate.knn_accuracy(evaluate.pixels(shapes, "train"), shapes.train_y,
                                evaluate.pixels(shapes, "test"), shapes.test_y)
    with capsys.disabled():
        print(f"\n{name}: {h.wall_time_s:.0f} s, {h.steps} steps, loss {h.epochs[0]['loss']:.3f} -> "
              f"{h.final_loss:.3f}; kNN untrained {untrained:.3f}, raw pixels {raw:.3f}, trained {trained:.3f}")
    assert untrained < raw  # what a pipeline that learns nothing would score
    assert trained > raw + margin


def embedding_rankme(method, ds):
    return metrics.rankme(evaluate.features(method, ds, "test", which="embedding"))


def train_byol(shapes, **options):
    torch.manual_seed(0)
    method = methods.build("byol", models.resnet18(8), **options)
    h = fit(method, shapes, epochs=5, batch_size=64, lr=0.3, views=augment.byol(min_scale=0.5),
            progress=False, log=False)
    return method, h


@pytest.mark.slow
def test_byol_trains_without_collapse_on_cpu(shapes, capsys):
    method, h = train_byol(shapes)
    rank = embedding_rankme(method, shapes)
    with capsys.disabled():
        print(f"\nbyol: {h.wall_time_s:.0f} s, {h.steps} steps, loss {h.epochs[0]['loss']:.3f} -> {h.final_loss:.3f}, "
              f"RankMe {rank:.1f}, kNN {knn(method, shapes):.3f}")
    assert h.epochs[0]["loss"] - h.final_loss > 0.15  # measured: -0.56 -> -0.85
    assert rank > 7  # measured 9.4-16.8 over seeds 0-2; collapsed variants 1.9-4.8


@pytest.mark.slow
def test_byol_without_stop_gradient_collapses(shapes, capsys):
    """The switch chapters use to show collapse does collapse: no teacher, gradients through the target."""
    method, h = train_byol(shapes, momentum=0.0, momentum_end=0.0, stop_gradient=False)
    rank = embedding_rankme(method, shapes)
    with capsys.disabled():
        print(f"\nbyol without stop-gradient: loss {h.epochs[0]['loss']:.3f} -> {h.final_loss:.3f}, RankMe {rank:.2f}")
    assert h.final_loss < -0.99  # the two views' embeddings agree perfectly ...
    assert rank < 3  # ... because they are (nearly) constant
