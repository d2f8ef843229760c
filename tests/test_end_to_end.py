"""End to end on CPU, with the CLI's defaults (the testbed recipes of
``cookbook.recipes``): each representative must beat raw-pixel kNN on the
test split by a margin that a broken pipeline cannot reach (an untrained
network scores below raw pixels; a broken augmentation, optimiser or loss
does not learn the shape). MAE, evaluated as MIM is, must fine-tune with 10 %
of the labels better than the same ViT trained from scratch on them, by a
margin that pre-training which learnt nothing useful does not reach.

Margins sit well under the means measured by ``benchmarks/testbed.py`` (3
seeds; ``benchmarks/README.md`` has the table): the seeds spread little, but
the CLI's own SimCLR run scored 82.4 % on 2026-12-03, here and on CI alike,
2 points under those seeds (measured on an earlier day, with other library
versions), and failed a margin of mean − 2 sd. A broken pipeline scores under
raw pixels, so these margins still catch it. Each run is
one ``python -m cookbook train --method M`` with no other option, in process.
"""

import json

import pytest

from cookbook import cli

# kNN (test) minus raw-pixel kNN (test), as fractions; see the module docstring.
MARGINS = {
    "simclr": 0.35,   # kNN 0.851 / 0.849 / 0.843 against raw pixels 0.413: +43.5 ± 0.4 points
    "vicreg": 0.35,   # 0.899 / 0.865 / 0.899: +47.5 ± 1.9 points
    "simsiam": 0.15,  # 0.684 / 0.645 / 0.664: +25.2 ± 2.0 points
}
# One representative per family keeps CI inside its 30 minutes. BYOL (+34.6 ± 4.7 points
# at 1,200 steps, twice the others' run) is measured instead by chapter 02's committed
# run at three seeds; its teacher is unit-tested (tests/test_methods.py) and its
# collapse switch below.
# Fine-tuned with 10 % of the labels, MAE (its recipe: 4 x 4 patches, 1,200 steps) minus the
# same ViT from scratch, seed by seed in chapter 04's committed run: +8.5 ± 0.7 points
# (49.8 ± 1.1 against 41.3 ± 1.1). Pre-training that teaches nothing useful falls below
# scratch: SimMIM -2.7 and SimCLR -6.9 points at the same pre-training time.
MAE_FINE_TUNE_GAIN = 0.04


def train_with_defaults(method, tmp_path, capsys):
    code = cli.main(["train", "--method", method, "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    with capsys.disabled():
        print("\n" + "\n".join(out.strip().splitlines()[-9:]))
    return json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(MARGINS))
def test_defaults_beat_raw_pixels(method, tmp_path, capsys):
    r = train_with_defaults(method, tmp_path, capsys)
    assert r["knn_test"] - r["knn_test_raw_pixels"] > MARGINS[method]


@pytest.mark.slow
def test_mae_fine_tunes_better_than_scratch(tmp_path, capsys):
    r = train_with_defaults("mae", tmp_path, capsys)
    assert r["finetune10_test"] - r["finetune10_test_scratch"] > MAE_FINE_TUNE_GAIN


@pytest.mark.slow
def test_byol_without_stop_gradient_collapses(capsys):
    """The switch the chapters use to show collapse does collapse: no teacher, and
    gradients through the target. Measured on the package issue's setting (ResNet-18
    width 8, 4,000 images at 32 px, 310 steps): final loss -0.999, RankMe 1.93."""
    import torch

    from cookbook import augment, data, evaluate, methods, metrics, models
    from cookbook.train import fit

    shapes = data.load("shapes", subset=4000, test_subset=1000, seed=0)
    torch.manual_seed(0)
    method = methods.build("byol", models.resnet18(8), momentum=0.0, momentum_end=0.0, stop_gradient=False)
    h = fit(method, shapes, epochs=5, batch_size=64, lr=0.3, views=augment.byol(min_scale=0.5),
            progress=False, log=False)
    rank = metrics.rankme(evaluate.features(method, shapes, "test", which="embedding"))
    with capsys.disabled():
        print(f"\nbyol without stop-gradient: loss {h.epochs[0]['loss']:.3f} -> {h.final_loss:.3f}, "
              f"RankMe {rank:.2f}")
    assert h.final_loss < -0.99  # the two views' embeddings agree perfectly ...
    assert rank < 3  # ... because they are (nearly) constant
