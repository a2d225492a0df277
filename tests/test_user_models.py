"""Models from outside the zoo: import paths, torchvision:, timm:, callables; and every way one
can be wrong, told before any trial starts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from raysweep import prune
from raysweep.models import ModelSourceError, check_on_sample, create_model, describe

pytestmark = pytest.mark.usefixtures("no_ray")


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def only_classes(num_classes):  # takes num_classes only: input_size must not be passed
    return TinyNet(num_classes)


def with_input_size(num_classes, input_size):
    return TinyNet(num_classes, channels=input_size[0])


def raises(num_classes):
    raise RuntimeError("no such layer size")


def not_a_module(num_classes):
    return {"weights": 1}


def wrong_width(num_classes):
    return TinyNet(num_classes + 3)


def wrong_channels(num_classes):
    return TinyNet(num_classes, channels=3)  # the digits are 1 x 8 x 8


@pytest.mark.parametrize("name", ["test_user_models:only_classes", "test_user_models:with_input_size", "test_user_models:TinyNet"])
def test_an_import_path_gets_only_the_keywords_its_factory_takes(name):
    model = create_model(name, num_classes=7, input_size=(1, 8, 8))
    assert isinstance(model, TinyNet) and model.head.out_features == 7
    assert create_model(with_input_size, num_classes=5, input_size=(2, 8, 8)).conv.in_channels == 2  # a callable
    assert describe(with_input_size) == "test_user_models:with_input_size"


def test_torchvision_models_by_name():
    model = create_model("torchvision:resnet18", num_classes=3, input_size=(3, 32, 32))
    assert model.fc.out_features == 3 and model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("name,message", [
    ("test_user_modls:TinyNet", "cannot import 'test_user_modls'"),
    ("test_user_models:TinyNett", "has no attribute 'TinyNett'; did you mean TinyNet"),
    ("test_user_models:raises", "its factory raised RuntimeError: no such layer size"),
    ("test_user_models:not_a_module", "returned a dict, not a torch.nn.Module"),
    ("torchvision:resnet81", "did you mean resnet18"),
    ("test_user_models", "unknown model"),
])  # fmt: skip
def test_a_model_that_cannot_be_built_says_why(name, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, num_classes=10, input_size=(1, 8, 8))


def test_timm_without_timm_says_how_to_get_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm":
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ModelSourceError, match=r'needs timm, which is not installed: pip install -e "\.\[timm\]"'):
        create_model("timm:resnet18", num_classes=10, input_size=(3, 32, 32))


@pytest.mark.parametrize("factory,message", [
    (wrong_width, r"outputs \(1, 13\) for one sample; a classifier of the dataset's 10 classes outputs \(1, 10\)"),
    (wrong_channels, r"fails on one sample of the data \(input \(1, 1, 8, 8\)\)"),
])  # fmt: skip
def test_a_model_that_does_not_fit_the_data_is_refused_before_any_trial(factory, message, capsys, tmp_path):
    with pytest.raises(ModelSourceError, match=message):
        check_on_sample(factory(10), (torch.zeros(1, 8, 8), 3), 10, "m")
    name = f"test_user_models:{factory.__name__}"
    assert prune.main(["--model", name, "--prune_type", "irregular", "--ratio", "0.5", "--output", str(tmp_path)]) == 2
    assert f"model {name!r}" in capsys.readouterr().err


def test_a_sample_that_is_not_a_tensor_and_a_label(tmp_path):
    with pytest.raises(ModelSourceError, match=r"samples must be \(tensor, int\) pairs"):
        check_on_sample(TinyNet(), {"x": 1}, 10, "m")


def test_a_sweep_space_takes_an_import_path_model_and_checks_targets_against_it():
    from raysweep.space import SpaceError, load_space

    space = load_space({"model": "test_user_models:TinyNet", "trials": 0,
                        "points": [{"method": "irregular", "ratios": {"conv.weight": 0.5, "head.weight": 0.25}}]})  # fmt: skip
    assert space.model == "test_user_models:TinyNet"
    with pytest.raises(SpaceError, match="'convv.weight' matches no prunable parameter"):
        load_space({"model": "test_user_models:TinyNet", "trials": 0, "points": [{"method": "irregular", "ratios": {"convv.weight": 0.5}}]})
    with pytest.raises(SpaceError, match="cannot import 'nowhere_module'"):
        load_space({"model": "nowhere_module:Net", "trials": 0, "points": [{"method": "irregular", "ratios": {"*": 0.5}}]})
