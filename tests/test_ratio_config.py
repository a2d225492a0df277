"""The seed's YAML ratio files and name resolution against a model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch.nn as nn

from pruners.ratio_config import (
    load_ratio_config,
    prunable_parameters,
    resolve_targets,
    strip_module_prefix,
)

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "prune_config"
SEED_FILES = sorted(SEED.glob("*.yaml")) if SEED.is_dir() else []


def _triple(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class MiniVGG(nn.Module):
    """VGG-16's naming (block0..block4 of [conv, bn, relu] triples, then classifier), tiny widths."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layout = [(3, 8, 2), (8, 8, 2), (8, 16, 3), (16, 16, 3), (16, 16, 3)]
        for i, (cin, cout, n) in enumerate(layout):
            layers: list[nn.Module] = []
            for j in range(n):
                layers += _triple(cin if j == 0 else cout, cout)
            setattr(self, f"block{i}", nn.Sequential(*layers))
        self.classifier = nn.Linear(16, classes)


VGG_CONVS = [
    f"block{i}.{j}.weight" for i, n in enumerate([2, 2, 3, 3, 3]) for j in (0, 3, 6)[:n]
]


def test_prunable_parameters_are_conv_and_linear_weights_in_order():
    assert prunable_parameters(MiniVGG()) == VGG_CONVS + ["classifier.weight"]


def test_prunable_parameters_strip_ddp_prefix():
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = MiniVGG()

    assert prunable_parameters(Wrapped()) == VGG_CONVS + ["classifier.weight"]
    assert strip_module_prefix("module.block0.0.weight") == "block0.0.weight"
    assert strip_module_prefix("block0.0.weight") == "block0.0.weight"


def test_seed_files_exist():
    names = {p.name for p in SEED_FILES}
    assert {
        "resnet18_imagenet_irre.yaml",
        "vgg16_cifar10_filter.yaml",
        "vgg16_cifar10_irre.yaml",
        "vgg16_cifar10_mn.yaml",
        "vgg16_cifar10_pat.yaml",
        "vgg16_cifar10_stripe.yaml",
    } <= names


@pytest.mark.parametrize("path", SEED_FILES, ids=lambda p: p.name)
def test_seed_yaml_loads_unchanged(path: Path):
    cfg = load_ratio_config(path)
    assert cfg and not any(k.startswith("module.") for k in cfg)
    if path.name.startswith("vgg16"):
        resolved = resolve_targets(MiniVGG(), cfg)
        assert list(resolved) == [n for n in VGG_CONVS + ["classifier.weight"] if n in cfg]


def test_seed_yaml_values():
    irre = load_ratio_config(SEED / "vgg16_cifar10_irre.yaml")
    assert irre["block0.0.weight"] == 0.0 and irre["block4.6.weight"] == 0.95
    assert irre["classifier.weight"] == 0.8 and len(irre) == 14
    mn = load_ratio_config(SEED / "vgg16_cifar10_mn.yaml")
    assert mn["block0.3.weight"] == "m4n2" and mn["block3.6.weight"] == "m8n1"
    pat = load_ratio_config(SEED / "vgg16_cifar10_pat.yaml")  # no trailing newline
    assert pat["block4.6.weight"] == 0.9
    resnet = load_ratio_config(SEED / "resnet18_imagenet_irre.yaml")
    assert resnet["layer4.0.downsample.0.weight"] == 0.3 and resnet["last_linear.weight"] == 0.2


def test_plain_mapping_and_int_targets():
    assert load_ratio_config({"module.a.weight": 1, "b.weight": "M4N2"}) == {"a.weight": 1.0, "b.weight": "m4n2"}


def test_plain_yaml_file(tmp_path: Path):
    p = tmp_path / "plain.yaml"
    p.write_text("block0.0.weight: 0.5\n'block1.*.weight': m4n2")
    assert load_ratio_config(p) == {"block0.0.weight": 0.5, "block1.*.weight": "m4n2"}


def test_missing_file_names_the_path(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_ratio_config(missing)


def test_all_bad_targets_in_one_error():
    with pytest.raises(ValueError) as info:
        load_ratio_config({"prune_ratio": {"a.weight": 1.5, "b.weight": "m2n4", "c.weight": 0.1, "d.weight": "x"}})
    msg = str(info.value)
    assert "'a.weight'" in msg and "'b.weight'" in msg and "'d.weight'" in msg and "'c.weight'" not in msg


def test_duplicate_after_prefix_strip_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        load_ratio_config({"module.a.weight": 0.1, "a.weight": 0.2})


def test_empty_and_non_mapping_files(tmp_path: Path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_ratio_config(empty)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 0.5\n")
    with pytest.raises(ValueError, match="mapping"):
        load_ratio_config(lst)


def test_unknown_names_list_closest_in_one_error():
    with pytest.raises(ValueError) as info:
        resolve_targets(MiniVGG(), {"block9.0.weight": 0.5, "classifer.weight": 0.5, "block0.0.weight": 0.1})
    msg = str(info.value)
    assert "'block9.0.weight' matches no prunable parameter; closest: " in msg
    line = next(l for l in msg.splitlines() if "block9.0.weight" in l)
    assert "block4.0.weight" in line
    assert "closest: classifier.weight" in msg


def test_non_prunable_parameter_is_named_as_such():
    with pytest.raises(ValueError, match="'block0.1.weight' is a BatchNorm2d parameter, not prunable"):
        resolve_targets(MiniVGG(), {"block0.1.weight": 0.5})


def test_bad_target_reported_with_bad_names():
    with pytest.raises(ValueError) as info:
        resolve_targets(MiniVGG(), {"block0.0.weight": 2.0, "nope.weight": 0.1})
    assert "block0.0.weight" in str(info.value) and "nope.weight" in str(info.value)


def test_globs_expand_and_exact_names_override():
    targets = {
        "block*.0.weight": 0.5,
        "block4.*.weight": 0.9,  # later glob overrides the earlier for block4.0
        "module.block4.3.weight": 0.1,  # exact beats any glob, module. stripped
        "classifier.weight": 0.2,
    }
    resolved = resolve_targets(MiniVGG(), targets)
    assert resolved == {
        "block0.0.weight": 0.5,
        "block1.0.weight": 0.5,
        "block2.0.weight": 0.5,
        "block3.0.weight": 0.5,
        "block4.0.weight": 0.9,
        "block4.3.weight": 0.1,
        "block4.6.weight": 0.9,
        "classifier.weight": 0.2,
    }
    assert list(resolved) == [n for n in prunable_parameters(MiniVGG()) if n in resolved]


def test_glob_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"pattern 'layer\*.weight' matches no prunable parameter; closest: "):
        resolve_targets(MiniVGG(), {"layer*.weight": 0.5})


def test_glob_does_not_match_batchnorm():
    resolved = resolve_targets(MiniVGG(), {"block0.*": 0.3})
    assert resolved == {"block0.0.weight": 0.3, "block0.3.weight": 0.3}
