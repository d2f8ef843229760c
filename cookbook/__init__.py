"""SSL Cookbook: the small package behind the book.

One module per concern:

- ``cookbook.data``      datasets as uint8 tensors (shapes, folder:PATH, cifar10)
- ``cookbook.augment``   batched, on-device augmentations and presets
- ``cookbook.models``    CIFAR ResNet-18/ResNet-10 with a width multiplier, tiny ViT, heads
- ``cookbook.methods``   SSL methods, one module per family (contrastive, distillation, cca, mim)
- ``cookbook.recipes``   the CPU testbed: one measured recipe per method (the CLI's defaults)
- ``cookbook.train``     ``fit``: optimiser, schedule, checkpoints, history
- ``cookbook.distributed`` torchrun: process group, gather with gradients, batch shares
- ``cookbook.evaluate``  features, kNN, linear probe, fine-tuning
- ``cookbook.metrics``   RankMe, alpha-ReQ, LiDAR, collapse report
- ``cookbook.experiment`` studies: train + evaluate a run, choose by a criterion
- ``cookbook.plots``     spectra and metric-vs-accuracy figures
- ``cookbook.budget``    notebook budgets and run cards
- ``cookbook.cli``       ``python -m cookbook``
"""

import os as _os
import sys as _sys

# GNU OpenMP's spinning threads make torch's element-wise CPU ops 10-40x slower
# on small VMs (measured: ReLU on 0.5 M floats, 7.9 ms with 2 threads against
# 0.22 ms with a passive wait). The setting only counts before torch is loaded,
# so import cookbook before torch on a CPU machine.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
