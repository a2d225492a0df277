"""Model registry: every model builds and runs; names match the seed's prune configs."""
from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from raysweep.models import (
    DATASET_FAMILY,
    MODELS,
    create_model,
    list_models,
    model_info,
    resolve_model_name,
)
from raysweep.models import small


SEED_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "seed" / "prune_config"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Anything that tries to download fails loudly instead of hanging."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)




@functools.lru_cache(maxsize=None)
def built(name: str) -> nn.Module:
    """Each model is built once per session (the ImageNet ones take seconds)."""
    return create_model(name).eval()


def seed_names(stem_prefix: str) -> set[str]:
    names: set[str] = set()
    for path in sorted(SEED_CONFIGS.glob(f"{stem_prefix}*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        names |= {k.removeprefix("module.") for k in cfg["prune_ratio"]}
    assert names, f"no seed configs {stem_prefix}* under {SEED_CONFIGS}"
    return names


@pytest.mark.parametrize("name", list_models())
def test_forward_at_default_size(name):
    info = model_info(name)
    with torch.inference_mode():
        out = built(name)(torch.randn(2, *info.input_size))
    assert out.shape == (2, info.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["digits_cnn", "lenet300", "lenet5", "cifar_vgg11", "resnet20",
                                  "wrn_16_2", "mobilenetv2", "cifar_resnet18", "resnet18"])
def test_num_classes_override(name):
    info = model_info(name)
    model = create_model(name, num_classes=7).eval()
    with torch.inference_mode():
        assert model(torch.randn(2, *info.input_size)).shape == (2, 7)


def test_input_size_override_and_callable():
    model = create_model("digits_cnn", input_size=(1, 16, 16), num_classes=3).eval()
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 3)
    model = create_model("lenet300", input_size=(1, 8, 8)).eval()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    model = create_model(small.digits_cnn, num_classes=4).eval()  # a constructor, not a name
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_registry_families():
    assert set(list_models("digits")) == {"digits_cnn"}
    assert set(list_models("mnist")) == {"lenet300", "lenet5"}
    assert {"resnet18", "resnet50", "vgg16", "vgg16_bn", "inception_v3"} == set(list_models("imagenet"))
    assert {"cifar_vgg16", "resnet20", "resnet110", "cifar_resnet50", "wrn_40_2"} <= set(list_models("cifar"))
    assert model_info("inception_v3").input_size == (3, 299, 299)
    assert model_info("digits_cnn").input_size == (1, 8, 8)
    assert all(e.family in set(DATASET_FAMILY.values()) for e in MODELS.values())


def test_vgg16_matches_seed_configs():
    state = built("cifar_vgg16").state_dict()
    names = seed_names("vgg16_cifar10")
    assert names <= set(state), sorted(names - set(state))
    # Reference layout: convs at 0/3/6 of each block, BN right after, Linear 512 -> classes.
    assert state["block2.6.weight"].shape == (256, 256, 3, 3)
    assert state["block2.7.weight"].shape == (256,)
    assert state["classifier.weight"].shape == (10, 512)
    assert not any(isinstance(m, nn.MaxPool2d) for m in built("cifar_vgg16").modules())


def test_resnet18_matches_seed_config():
    names = seed_names("resnet18_imagenet")
    for model_name in ("resnet18", "cifar_resnet18"):  # same naming in both families
        state = set(built(model_name).state_dict())
        assert names <= state, (model_name, sorted(names - state))
    assert not hasattr(built("resnet18"), "fc")


def test_digits_cnn_is_prunable_everywhere_but_first_conv():
    convs = [m for m in built("digits_cnn").modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in built("digits_cnn").modules() if isinstance(m, nn.Linear)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert all(c.in_channels % 8 == 0 for c in convs[1:])
    assert all(lin.in_features % 8 == 0 for lin in linears)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("resnet18", {"dataset": "cifar10"}, "cifar_resnet18"),
        ("resnet18", {"dataset": "cifar100"}, "cifar_resnet18"),
        ("resnet18", {"dataset": "imagenet"}, "resnet18"),
        ("resnet18", {}, "resnet18"),  # default family: imagenet
        ("resnet18", {"family": "cifar"}, "cifar_resnet18"),
        ("resnet50", {"dataset": "imagefolder"}, "resnet50"),
        ("vgg16", {"dataset": "cifar10"}, "cifar_vgg16"),
        ("vgg16", {}, "vgg16"),
        ("vgg11", {}, "cifar_vgg11"),  # only one family has it
        ("resnet34", {}, "cifar_resnet34"),
        ("cifar_resnet18", {"dataset": "imagenet"}, "cifar_resnet18"),  # full keys are literal
        ("digits_cnn", {"dataset": "digits"}, "digits_cnn"),
    ],
)
def test_ambiguous_name_resolution(name, kwargs, expected):
    assert resolve_model_name(name, **kwargs) == expected


def test_create_model_resolves_by_dataset():
    model = create_model("resnet18", dataset="cifar10", num_classes=10)
    assert model.conv1.kernel_size == (3, 3)  # CIFAR stem
    with pytest.raises(ValueError, match="svhn"):
        create_model("resnet18", dataset="svhn")
    with pytest.raises(ValueError, match="no 'mnist' variant"):
        create_model("resnet18", family="mnist")


def test_unknown_model_names_nearest():
    with pytest.raises(ValueError, match="did you mean resnet18"):
        create_model("resnt18")
    with pytest.raises(ValueError, match="unknown model 'zzz'"):
        model_info("zzz")


def test_pretrained_only_for_imagenet():
    with pytest.raises(ValueError, match="only for ImageNet"):
        create_model("lenet5", pretrained=True)


def test_pretrained_missing_file_names_path(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    expected = os.path.join(str(tmp_path), "checkpoints", "resnet18-f37072fd.pth")
    with pytest.raises(FileNotFoundError) as err:
        create_model("resnet18", pretrained=True)
    assert expected in str(err.value) and "never downloads" in str(err.value)


def test_pretrained_loads_local_cache_and_remaps_fc(monkeypatch, tmp_path):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    ref = torchvision.models.resnet18(weights=None).eval()
    # Old torchvision files lack BN's num_batches_tracked; loading must cope.
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")

    model = create_model("resnet18", pretrained=True).eval()
    assert torch.equal(model.last_linear.weight, ref.fc.weight)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model(x), ref(x))
    head = create_model("resnet18", pretrained=True, num_classes=5).last_linear  # fresh head
    assert head.out_features == 5 and not head.weight.is_meta
