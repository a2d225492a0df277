"""The ``channel`` method: dependency-aware groups, exact counts, truly dead channels, compaction
exact at any input size, masks through training and checkpoints, every model compacts."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import pruners
from pruners.allocation import resolve_allocation
from pruners.channels import channel_groups
from pruners.compact import compact
from pruners.selection import count_for_ratio
from raysweep.models import create_model, list_models, model_info

from pruners.testing import trained_like

TOL = 1e-5


def channel(model: nn.Module, targets: dict, shape: tuple[int, ...], **options) -> pruners.PruneReport:
    return pruners.prepare(model, targets, "channel", example_input=torch.zeros(1, *shape), **options)


def dead_rows(model: nn.Module, module: str) -> torch.Tensor:
    """Rows (output channels) of ``module``'s weight whose every weight is masked."""
    return ~pruners.masked_parameters(model)[f"{module}.weight"].mask.flatten(1).any(1)


def max_diff(a: nn.Module, b: nn.Module, shape: tuple[int, ...]) -> float:
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


def test_exact_channel_counts_in_every_group_and_one_choice_per_group():
    model = trained_like(create_model("resnet20"))
    groups = [g for g in channel_groups(model, torch.zeros(1, 3, 32, 32)) if g.free]
    channel(model, {"*": 0.3}, (3, 32, 32))
    for g in groups:
        rows = [dead_rows(model, m) for m, p in g.producers if p == "weight"]
        assert all(torch.equal(r, rows[0]) for r in rows)  # every producer loses the same channels
        assert int(rows[0].sum()) == count_for_ratio(0.3, g.size)
    assert pruners.sparsity_report(model)["sparsity"] > 0.3  # consumers' columns go too


def test_residual_streams_are_removed_coherently():
    torch.manual_seed(0)
    model = trained_like(create_model("resnet20"))
    channel(model, {"*": 0.5}, (3, 32, 32))
    small, report = compact(model, torch.zeros(1, 3, 32, 32))
    # Three streams (16, 32, 64 channels) and three block-inner groups per stage, each halved.
    assert report.kept_dead == {} and report.channels_removed == report.channels_dead == 8 + 16 + 32 + 3 * (8 + 16 + 32)
    assert small.conv1.out_channels == 8 and small.last_linear.in_features == 32
    for stage, width in ((1, 8), (2, 16), (3, 32)):
        layer = getattr(small, f"layer{stage}")
        assert all(block.conv2.out_channels == width and block.conv1.in_channels == width for block in layer[1:])
    assert small.layer2[0].downsample[0].out_channels == 16 and max_diff(small, model, (3, 32, 32)) <= TOL


def test_a_target_addresses_its_group_through_any_member():
    model = trained_like(create_model("resnet20"))
    report = channel(model, {"layer1.1.conv2.weight": 0.5}, (3, 32, 32))
    stream = ["conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight", "layer1.2.conv2.weight"]
    assert report.pruned == dict.fromkeys(stream, 0.5)
    masks = pruners.masked_parameters(model)
    # The stream's readers lose the same input channels: derived masks, no method of their own.
    for reader in ("layer1.0.conv1.weight", "layer2.0.conv1.weight", "layer2.0.downsample.0.weight"):
        assert masks[reader].method == "" and masks[reader].reads
        assert torch.equal(~masks[reader].mask.transpose(0, 1).flatten(1).any(1), dead_rows(model, "conv1"))
    # A group's ratio is its named members' parameter-weighted mean: 0.5 * 2304 / (432 + 2304) of 16.
    model = trained_like(create_model("resnet20"))
    channel(model, {"conv1.weight": 0.0, "layer1.0.conv2.weight": 0.5}, (3, 32, 32))
    assert int(dead_rows(model, "conv1").sum()) == count_for_ratio(0.5 * 2304 / 2736, 16) == 7
    # A depthwise conv addresses the group of the expansion conv it follows.
    mbv2 = trained_like(create_model("mobilenetv2"))
    channel(mbv2, {"features.2.conv.3.weight": 0.5}, (3, 32, 32))
    assert int(dead_rows(mbv2, "features.2.conv.0").sum()) == 48
    assert torch.equal(dead_rows(mbv2, "features.2.conv.3"), dead_rows(mbv2, "features.2.conv.0"))


class Grouped(nn.Module):
    """conv -> BN -> grouped conv (4 groups) -> BN -> 1x1 conv -> depthwise conv -> BN -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.b, self.bn_b = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 8, 1)
        self.dw, self.bn_dw = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_b(self.b(torch.relu(self.bn_a(self.a(x))))))
        x = torch.relu(self.bn_dw(self.dw(self.c(x))))
        return self.fc(x.mean((2, 3)))


def test_grouped_and_depthwise_convs_stay_consistent():
    torch.manual_seed(0)
    model = trained_like(Grouped())
    channel(model, {"*": 0.3}, (3, 8, 8))
    for name in ("a", "b"):  # 16 channels read or written in 4 groups of 4: round(0.3 * 4) = 1 per group
        assert dead_rows(model, name).view(4, 4).sum(1).tolist() == [1, 1, 1, 1]
    assert int(dead_rows(model, "c").sum()) == count_for_ratio(0.3, 8)
    assert torch.equal(dead_rows(model, "dw"), dead_rows(model, "c"))
    small, report = compact(model, torch.zeros(1, 3, 8, 8))
    assert report.kept_dead == {} and (small.b.in_channels, small.b.out_channels, small.b.groups) == (12, 12, 4)
    assert small.dw.groups == small.dw.out_channels == small.c.out_channels == 6
    for shape in ((3, 8, 8), (3, 11, 13)):
        assert max_diff(small, model, shape) <= TOL


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_removed_channel_outputs_exactly_zero_after_batchnorm(mode):
    model = trained_like(create_model("mobilenetv2"))
    channel(model, {"*": 0.5}, (3, 32, 32))
    seen = {}
    for name in ("features.0.1", "features.2.conv.1", "features.2.conv.4", "features.2.conv.7"):
        model.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    getattr(model, mode)()
    model(torch.randn(4, 3, 32, 32))
    for bn, producer in (("features.0.1", "features.0.0"), ("features.2.conv.1", "features.2.conv.0"),
                         ("features.2.conv.4", "features.2.conv.0"), ("features.2.conv.7", "features.2.conv.6")):  # fmt: skip
        dead = dead_rows(model, producer)
        assert dead.any() and seen[bn][:, dead].abs().max() == 0.0


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet20"])
def test_compaction_is_exact_at_two_input_sizes(name):
    torch.manual_seed(0)
    model = trained_like(create_model(name))
    channel(model, {"*": 0.5}, (3, 32, 32))
    small, report = compact(model, torch.zeros(1, 3, 32, 32))
    assert report.kept_dead == {} and not report.bias_maps and report.channels_removed > 0
    assert pruners.is_masked(model) and not pruners.is_masked(small)
    for shape in ((3, 32, 32), (3, 48, 40)):
        assert max_diff(small, model, shape) <= TOL
    same, _ = compact(model, torch.zeros(1, 3, 32, 32), inplace=True)  # the masked model itself becomes it
    assert same is model and not pruners.is_masked(model) and max_diff(same, small, (3, 32, 32)) <= TOL


def test_masks_survive_a_training_step_and_a_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = trained_like(create_model("digits_cnn"))
    channel(model, {"*": 0.5}, (1, 8, 8))
    masks = pruners.masked_parameters(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(torch.randn(16, 1, 8, 8)), torch.randint(0, 10, (16,)))
        opt.zero_grad(), loss.backward(), opt.step()
    for name, wm in masks.items():
        mod_name, _, tensor = name.rpartition(".")
        assert (getattr(model.get_submodule(mod_name), tensor)[~wm.mask] == 0).all(), name
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    fresh = create_model("digits_cnn")
    pruners.load_masked_state_dict(fresh, torch.load(tmp_path / "ckpt.pt", weights_only=True))
    loaded = pruners.masked_parameters(fresh)
    assert list(loaded) == list(masks)
    assert all(torch.equal(loaded[n].mask, masks[n].mask) and loaded[n].follows == masks[n].follows for n in masks)
    assert max_diff(fresh, model, (1, 8, 8)) == 0.0
    pruners.step(fresh), pruners.step(model)  # a reloaded model re-traces its groups and keeps stepping
    assert all(torch.equal(loaded[n].mask, masks[n].mask) for n in masks)
    for masked in (fresh, model):  # the trained model's forward left its float masks cached
        small, _ = compact(masked, torch.zeros(1, 1, 8, 8))
        assert max_diff(small, model, (1, 8, 8)) <= TOL


def test_taylor_importance_ranks_with_gradients_and_keeps_exact_counts():
    torch.manual_seed(0)
    data = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))) for _ in range(2)]
    l1, taylor = trained_like(create_model("digits_cnn")), trained_like(create_model("digits_cnn"))
    channel(l1, {"features.*": 0.5}, (1, 8, 8))
    channel(taylor, {"features.*": 0.5}, (1, 8, 8), importance="taylor", data=data)
    for conv, size in (("features.0", 16), ("features.3", 32), ("features.7", 64)):
        assert int(dead_rows(taylor, conv).sum()) == size // 2
    assert any(not torch.equal(dead_rows(l1, c), dead_rows(taylor, c)) for c in ("features.0", "features.3", "features.7"))
    assert pruners.masked_parameters(taylor)["features.0.weight"].options["importance"] == "taylor"
    with pytest.raises(ValueError, match="did you mean 'taylor'"):
        channel(create_model("digits_cnn"), {"*": 0.5}, (1, 8, 8), importance="tailor")
    with pytest.raises(ValueError, match="needs data"):
        channel(create_model("digits_cnn"), {"*": 0.5}, (1, 8, 8), importance="taylor")
    with pytest.raises(ValueError, match="example_input"):
        pruners.prepare(create_model("digits_cnn"), {"*": 0.5}, "channel")


def test_allocation_families_and_schedules_work_on_groups():
    torch.manual_seed(0)
    model = trained_like(create_model("digits_cnn"))
    targets = resolve_allocation(model, "channel", {"classifier.2.weight": 0.0}, {"family": "lamp", "target": 0.5})
    report = channel(model, targets, (1, 8, 8))  # a schedule's start: masks attached dense
    pruners.step(model, fraction=0.0)
    assert all(wm.mask.all() for wm in pruners.masked_parameters(model).values())
    pruners.step(model, fraction=0.5)  # halfway: each group at half its ratio, still an exact count
    for name, ratio in report.pruned.items():
        size = model.get_submodule(name.rpartition(".")[0]).weight.shape[0]
        assert int(dead_rows(model, name.rpartition(".")[0]).sum()) == count_for_ratio(ratio * 0.5, size)
    assert "classifier.2.weight" in report.skipped  # its channels are the model's output


# A shape each model accepts that keeps the test quick (ImageNet models at 64 px, Inception at 80).
def _shape(name: str) -> tuple[int, ...]:
    c, h, w = model_info(name).input_size
    return (c, min(h, 80 if name == "inception_v3" else 64), min(w, 80 if name == "inception_v3" else 64))


TORCHVISION = {"regnet_x_400mf": (3, 64, 64), "densenet121": (3, 64, 64), "shufflenet_v2_x1_0": (3, 64, 64)}


@pytest.mark.parametrize("name", list_models() + list(TORCHVISION))
def test_every_model_compacts_exactly(name):
    torch.manual_seed(0)
    if name in TORCHVISION:
        model, shape = getattr(torchvision.models, name)(num_classes=10), TORCHVISION[name]
    else:
        model, shape = create_model(name, num_classes=10), _shape(name)
    model = trained_like(model)
    report = channel(model, {"*": 0.5}, shape)
    assert report.pruned
    small, compacted = compact(model, torch.zeros(1, *shape))
    assert compacted.channels_removed > 0 and compacted.kept_dead == {}
    assert compacted.params_after < compacted.params_before
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.eval()(x)
        scale = max(1.0, float(expected.abs().max()))  # random BatchNorm statistics grow with depth
        assert float((small(x) - expected).abs().max()) <= TOL * scale
