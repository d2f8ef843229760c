"""End to end on CPU, with the CLI's defaults (the testbed recipes of
``cookbook.recipes``): each representative must beat raw-pixel kNN on the
test split by a margin that a broken pipeline cannot reach (an untrained
network scores below raw pixels; a broken augmentation, optimiser or loss
does not learn the shape). MAE, evaluated as MIM is, must fine-tune with 10 %
of the labels better than the same ViT trained from scratch on them, by a
margin that pre-training which learnt nothing useful does not reach.

Margins sit well under the means measured by ``benchmarks/testbed.py`` (3
seeds; ``benchmarks/README.md`` has the table): the seeds spread little, but
the CLI's own two-thread SimCLR run scored 82.4 % on 2026-12-03, here and on
CI alike, 2 points under those seeds (measured on an earlier day, with other
library versions), and failed a margin of mean − 2 sd. A broken pipeline
scores under raw pixels, so these margins still catch it. Each run is one
``python -m cookbook train --method M`` with no other option: VICReg's in
process on two threads, the others two at a time in their own one-thread
processes (IN_PARALLEL), whose rounding differs from two threads': on
2026-12-03 the one-thread CLI runs scored SimCLR 85.2 %, SimSiam 58.2 % (its
two-thread seeds: 64.5-68.4 %, hence its margin of 10 points) and MAE +8.6
points over scratch; the four tests took 746 s instead of 1,124 s one after
another.
"""

import json
import os
import subprocess
import sys

import pytest

from cookbook import cli

# kNN (test) minus raw-pixel kNN (test), as fractions; see the module docstring.
MARGINS = {
    "simclr": 0.35,   # kNN 0.851 / 0.849 / 0.843 against raw pixels 0.413: +43.5 ± 0.4 points
    "vicreg": 0.35,   # 0.899 / 0.865 / 0.899: +47.5 ± 1.9 points
    "simsiam": 0.10,  # 0.684 / 0.645 / 0.664 (two threads): +25.2 ± 2.0; the CLI's one-thread run 0.582
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


#: Trained two at a time, one thread each, in their own processes: two one-thread runs
#: give about 1.75x the throughput of one two-thread run (benchmarks/parallel_runs.py),
#: which keeps CI inside its 30 minutes. VICReg trains alone on both threads, in
#: process: at its recipe's lr a one-thread run can diverge (chapter 03 halves it).
IN_PARALLEL = ("mae", "simclr", "simsiam")


def _show(out: str, capsys) -> None:
    with capsys.disabled():
        print("\n" + "\n".join(out.strip().splitlines()[-9:]))


@pytest.fixture(scope="module")
def parallel_runs(request, tmp_path_factory):
    """``{method: (return code, output, out folder)}`` of ``python -m cookbook train
    --method M`` for the methods of IN_PARALLEL whose tests were selected."""
    from concurrent.futures import ThreadPoolExecutor

    wanted = [m for m in IN_PARALLEL
              if any(f"[{m}]" in item.nodeid or (m == "mae" and "test_mae_" in item.nodeid)
                     for item in request.session.items)]
    root = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(method):
        out = root / method
        done = subprocess.run([sys.executable, "-m", "cookbook", "train", "--method", method, "--out", str(out),
                               "--no-progress"], capture_output=True, text=True, env=env, timeout=3600)
        return method, (done.returncode, done.stdout + done.stderr, out)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(train, wanted))


def train_with_defaults(method, request, tmp_path, capsys):
    if method in IN_PARALLEL:
        code, out, folder = request.getfixturevalue("parallel_runs")[method]
    else:
        folder = tmp_path
        code = cli.main(["train", "--method", method, "--out", str(folder), "--no-progress"])
        out = capsys.readouterr().out
    assert code == 0, out
    _show(out, capsys)
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(MARGINS))
def test_defaults_beat_raw_pixels(method, request, tmp_path, capsys):
    r = train_with_defaults(method, request, tmp_path, capsys)
    assert r["knn_test"] - r["knn_test_raw_pixels"] > MARGINS[method]


@pytest.mark.slow
def test_mae_fine_tunes_better_than_scratch(request, tmp_path, capsys):
    r = train_with_defaults("mae", request, tmp_path, capsys)
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
