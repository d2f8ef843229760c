"""fit's run length in steps, its fixed-learning-rate groups and the precision it picks."""

import math

import pytest
import torch

from cookbook import data, methods, models, train


@pytest.fixture(scope="module")
def tiny_shapes():
    return data.load("shapes", subset=64, test_subset=16, image_size=16)


def test_steps_sets_the_run_length_and_cuts_the_last_epoch(tiny_shapes):
    m = methods.SimCLR(models.resnet10(2))
    h = train.fit(m, tiny_shapes, steps=5, batch_size=16, progress=False, log=False)  # 4 steps an epoch
    assert h.steps == 5 and len(h.epochs) == 2


def test_epochs_and_steps_are_exclusive(tiny_shapes):
    m = methods.SimCLR(models.resnet10(2))
    with pytest.raises(ValueError, match="not both"):
        train.fit(m, tiny_shapes, epochs=1, steps=3, batch_size=16, progress=False, log=False)
    with pytest.raises(ValueError, match="steps"):
        train.fit(m, tiny_shapes, steps=0, batch_size=16, progress=False, log=False)


def test_warmup_defaults_to_a_tenth_of_the_steps():
    peak = 1.0
    # 100 steps: warm-up over 10, so step 9 reaches the peak and step 10 starts the decay
    assert train.lr_at(4, 100, 10, peak) == pytest.approx(0.5)
    assert train.lr_at(9, 100, 10, peak) == pytest.approx(peak)
    assert train.lr_at(99, 100, 10, peak) < 0.01


def test_optimizer_groups_mark_fixed_lr_parameters():
    m = methods.SimSiam(models.resnet10(2))
    opt = train.make_optimizer(m, "sgd", 0.1, 1e-4)
    fixed = {id(p) for g in opt.param_groups if g["fixed_lr"] for p in g["params"]}
    assert fixed == {id(p) for p in m.predictor.parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m.parameters()))
    plain = train.make_optimizer(methods.SimCLR(models.resnet10(2)), "sgd", 0.1, 1e-4)
    assert not any(g["fixed_lr"] for g in plain.param_groups)


@pytest.mark.parametrize("capability,expected", [((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16"),
                                                 ((6, 0), "fp16")])
def test_auto_precision_uses_bf16_only_where_the_gpu_has_it(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert train.select_precision(torch.device("cuda"), "auto") == expected


def test_precision_on_cpu_is_fp32_and_explicit_requests_are_honoured(monkeypatch):
    assert train.select_precision("cpu") == "fp32"
    assert train.select_precision("cpu", "fp32") == "fp32"
    with pytest.raises(ValueError, match="CUDA"):
        train.select_precision("cpu", "fp16")
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="emulated.*fp32"):
        train.select_precision("cpu", "bf16")
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert train.select_precision("cpu", "bf16") == "bf16"  # bf16 hardware: honoured
    assert train.select_precision("cpu") == "fp32"  # but never chosen by auto
    with pytest.raises(ValueError, match="unknown precision"):
        train.select_precision("cpu", "fp8")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert train.select_precision(torch.device("cuda"), "bf16") == "bf16"  # asked for: honoured
    assert train.select_precision(torch.device("cuda"), "fp32") == "fp32"


@pytest.mark.skipif(not train.cpu_has_native_bf16(), reason="this CPU has no bf16 hardware")
def test_bf16_on_a_cpu_that_has_it_trains_under_cpu_autocast(tiny_shapes):
    torch.manual_seed(0)
    m = methods.SimCLR(models.resnet10(8))
    seen = []
    m.backbone.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    h = train.fit(m, tiny_shapes, steps=3, batch_size=32, precision="bf16", progress=False, log=False)
    assert h.precision == "bf16" and seen == [torch.bfloat16] * 3
    assert all(math.isfinite(e["loss"]) for e in h.epochs)
    assert all(p.dtype == torch.float32 for p in m.parameters())  # autocast: fp32 weights, bf16 compute


def test_fine_tune_copies_the_backbone_and_learns_from_labels(tiny_shapes):
    from cookbook import evaluate

    net = models.resnet10(2)
    before = [p.clone() for p in net.parameters()]
    torch.manual_seed(0)
    acc, model = evaluate.fine_tune(net, tiny_shapes, labelled_fraction=1.0, steps=30, batch_size=32,
                                    lr=3e-3, return_model=True)
    assert 0.0 <= acc <= 1.0 and model[0] is not net
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the caller's is untouched
    assert any(not torch.equal(a, b) for a, b in zip(before, model[0].parameters()))  # the copy trained
    with pytest.raises(ValueError, match="labelled_fraction"):
        evaluate.fine_tune(net, tiny_shapes, labelled_fraction=0.0)
