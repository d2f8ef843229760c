import math
import pytest
import torch

from cookbook import augment as A

IDENTITY = dict(min_scale=1.0, max_scale=1.0, ratio=(1.0, 1.0), hf_prob=0.0, cj_prob=0.0,
                random_gray_scale=0.0, gaussian_blur=0.0, solarization_prob=0.0)


def batch(n=64, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_all_ops_off_is_identity():
    x = batch()
    y = A.view(x, A.ViewSpec(**IDENTITY))
    assert y.shape == x.shape and y.dtype == torch.float32
    torch.testing.assert_close(y, x.float() / 255, atol=1e-5, rtol=0)


@pytest.mark.parametrize("op", ["cj_prob", "random_gray_scale", "gaussian_blur", "solarization_prob", "hf_prob", "rr_prob"])
def test_each_op_changes_images_at_probability_one(op):
    x = batch()
    y = A.view(x, A.ViewSpec(**{**IDENTITY, op: 1.0}))
    assert not torch.allclose(y, x.float() / 255, atol=1e-3)


def test_crop_areas_within_scale_range_and_inside_image():
    spec = A.ViewSpec(min_scale=0.2, max_scale=0.9)
    w, h, cx, cy = A.sample_crops(20_000, spec, torch.Generator().manual_seed(0))
    area = w * h
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 0.9 + 1e-6
    assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all()
    assert (cy - h / 2 >= -1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()
    ratio = w / h
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    # areas spread over the range rather than piling up at one end
    assert 0.45 < area.mean() < 0.65


def test_crop_of_known_box_matches_slicing():
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).repeat(1, 3, 1, 1)
    # left half of the image, top half: w=h=0.5, centre (0.25, 0.25) -> exactly the 8x8 top-left block
    one = torch.ones(1)
    y = A.resized_crop(x, 0.5 * one, 0.5 * one, 0.25 * one, 0.25 * one, torch.zeros(1, dtype=torch.bool), 8)
    torch.testing.assert_close(y, x[..., :8, :8], atol=1e-4, rtol=0)
    full = A.resized_crop(x, one, one, 0.5 * one, 0.5 * one, torch.ones(1, dtype=torch.bool), 16)
    torch.testing.assert_close(full, x.flip(-1))


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_flip_happens_at_its_probability(p):
    # an image that is not mirror-symmetric; no crop, so a view is either x or its mirror
    x = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(4000, 3, 32, 32).contiguous()
    y = A.view(x, A.ViewSpec(**{**IDENTITY, "hf_prob": p}), torch.Generator().manual_seed(1))
    flipped = (y[:, 0, 0, 0] > 0.5).float().mean().item()
    assert abs(flipped - p) < 0.03


def test_grayscale_probability_and_result():
    x = batch(4000)
    y = A.view(x, A.ViewSpec(**{**IDENTITY, "random_gray_scale": 0.25}), torch.Generator().manual_seed(2))
    gray = (y.std(dim=1).amax(dim=(1, 2)) < 1e-6).float().mean().item()
    assert abs(gray - 0.25) < 0.03


def test_hsv_round_trip_and_hue_shift():
    x = torch.rand(8, 3, 5, 5)
    torch.testing.assert_close(A.hsv_to_rgb(A.rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    hsv = A.rgb_to_hsv(red)
    hsv[:, 0] = (hsv[:, 0] + 1 / 3) % 1
    torch.testing.assert_close(A.hsv_to_rgb(hsv), torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1), atol=1e-6, rtol=0)


def test_solarization_inverts_bright_pixels_only():
    x = torch.tensor([0.2, 0.7]).view(1, 1, 1, 2).expand(1, 3, 2, 2).contiguous()
    y = A.view(x, A.ViewSpec(size=2, **{**IDENTITY, "solarization_prob": 1.0}))
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.2, 0.3]), atol=1e-5, rtol=0)


def test_blur_preserves_mean_and_smooths():
    x = batch(8).float() / 255
    y = A.gaussian_blur(x, torch.full((8,), 1.5))
    torch.testing.assert_close(y.mean(), x.mean(), atol=5e-3, rtol=0)
    assert y.diff(dim=-1).abs().mean() < 0.5 * x.diff(dim=-1).abs().mean()


def test_brightness_and_saturation_ranges():
    spec = A.ViewSpec(**{**IDENTITY, "cj_prob": 1.0, "cj_contrast": 0.0, "cj_sat": 0.0, "cj_hue": 0.0, "cj_bright": 0.5})
    x = torch.full((2000, 3, 4, 4), 0.5)
    y = A.view(x, A.ViewSpec(size=4, **{k: v for k, v in spec.__dict__.items() if k != "size"}), torch.Generator().manual_seed(3))
    factor = y[:, 0, 0, 0] / 0.5
    assert factor.min() >= 0.5 - 1e-5 and factor.max() <= 1.5 + 1e-5
    assert factor.std() > 0.2  # really random per sample


def test_seeded_generator_reproduces_views():
    x = batch()
    views = A.simclr()
    a = views(x, torch.Generator().manual_seed(7))
    b = views(x, torch.Generator().manual_seed(7))
    c = views(x, torch.Generator().manual_seed(8))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    assert not torch.allclose(a[0], c[0])
    assert not torch.allclose(a[0], a[1])  # two views of one image differ


def test_presets_shapes_and_lightly_defaults():
    x = batch(4)
    assert [v.shape[-1] for v in A.dino(n_local=3)(x)] == [32, 32, 16, 16, 16]
    small = A.dino(16, n_local=2, local_scale=(0.3, 0.6), min_scale=0.6)
    assert [s.size for s in small.specs] == [16, 16, 8, 8]  # local crops: half the size
    assert (small.specs[0].min_scale, small.specs[2].min_scale, small.specs[2].max_scale) == (0.6, 0.3, 0.6)
    assert len(A.dino(n_local=0)) == 2
    with pytest.raises(ValueError, match="n_local"):
        A.dino(n_local=-1)
    byol = A.byol()
    assert byol.specs[0].solarization_prob == 0.0 and byol.specs[1].solarization_prob == 0.2
    assert byol.specs[0].cj_bright == 0.4 and byol.specs[0].cj_hue == 0.1
    assert A.vicreg().specs[0].cj_strength == 0.5
    s = A.simclr().specs[0]
    assert (s.cj_prob, s.cj_bright, s.cj_hue, s.min_scale, s.random_gray_scale) == (0.8, 0.8, 0.2, 0.08, 0.2)
    with pytest.raises(ValueError):
        A.Views([])


def test_show_views_draws_a_grid():
    import matplotlib
    matplotlib.use("Agg")
    fig = A.show_views(batch(3), A.simclr(), n_images=3)
    assert len(fig.axes) == 3 * 3


def test_rotation_angles():
    gen = torch.Generator().manual_seed(0)
    assert (A.sample_angles(100, A.ViewSpec(rr_prob=0.0), gen) == 0).all()
    quarter = A.sample_angles(2000, A.ViewSpec(rr_prob=1.0), gen) / (math.pi / 2)
    torch.testing.assert_close(quarter, quarter.round())
    assert set(quarter.round().long().tolist()) == {0, 1, 2, 3}
    small = A.sample_angles(2000, A.ViewSpec(rr_prob=0.5, rr_degrees=30.0), gen)
    assert small.abs().max() <= math.radians(30) + 1e-6
    assert abs((small == 0).float().mean().item() - 0.5) < 0.05


def test_rotating_the_full_image_by_quarter_turns_is_exact():
    x = torch.rand(1, 3, 8, 8)
    one, no_flip = torch.ones(1), torch.zeros(1, dtype=torch.bool)
    for k in (1, 2):
        y = A.resized_crop(x, one, one, 0.5 * one, 0.5 * one, no_flip, 8, torch.full((1,), k * math.pi / 2))
        torch.testing.assert_close(y, torch.rot90(x, k, dims=(-2, -1)), atol=1e-5, rtol=0)
