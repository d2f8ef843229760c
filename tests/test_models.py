import pytest
import torch
from torch import nn

from cookbook import models


@pytest.mark.parametrize("width", [8, 16])
def test_resnet18_shapes_and_width(width):
    net = models.resnet18(width)
    assert net.dim == 8 * width
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 8 * width)
    # CIFAR stem: 3x3 conv, no max-pool; the last stage runs at 4x4 for 32x32 inputs
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    first_conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.kernel_size == (3, 3) and first_conv.stride == (1, 1)


def test_resnet18_width_64_is_the_standard_network():
    n = sum(p.numel() for p in models.resnet18(64).parameters())
    assert 11.1e6 < n < 11.2e6  # CIFAR ResNet-18 without classifier: 11.17 M
    assert "width 64" in models.describe(models.resnet18(64))


def test_backbone_normalises_its_input():
    net = models.resnet18(8).eval()
    x = torch.rand(2, 3, 32, 32)
    norm = models.Normalize()
    torch.testing.assert_close(norm(x) * norm.std + norm.mean, x)
    assert not torch.allclose(net(x), net.net[1:](x))  # the Normalize layer is applied


def test_vit_tiny():
    vit = models.vit_tiny(depth=2)
    assert vit(torch.rand(2, 3, 32, 32)).shape == (2, 192)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        models.vit_tiny(image_size=30)


def test_backbone_by_name():
    assert isinstance(models.backbone("resnet18", width=8), models.ResNet)
    with pytest.raises(ValueError, match="resnet18"):
        models.backbone("resnet50")
    with pytest.raises(ValueError, match="width"):
        models.resnet18(0)


@pytest.mark.parametrize("depth,n_linear", [(0, 0), (1, 1), (2, 2), (3, 3)])
def test_mlp_head_depth(depth, n_linear):
    head = models.mlp_head(32, 64, 16, depth)
    assert sum(isinstance(m, nn.Linear) for m in head.modules()) == n_linear
    out = head(torch.rand(4, 32))
    assert out.shape == (4, 32 if depth == 0 else 16)
    assert models.head_dim(head, 32) == out.shape[1]


def test_mlp_head_last_layer_is_linear_unless_asked():
    head = models.mlp_head(32, 64, 16, 2)
    assert isinstance(list(head.modules())[-1], nn.Linear)
    head = models.mlp_head(32, 64, 16, 2, last_batch_norm=True)
    assert isinstance(list(head.modules())[-1], nn.BatchNorm1d)
    with pytest.raises(ValueError):
        models.mlp_head(32, 64, 16, -1)
