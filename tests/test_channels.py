"""Channel groups: exact structures, and a random permutation of every free group keeps outputs."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import pruners
from pruners.channels import ChannelGroup, channel_groups, index_channels
from raysweep.models import create_model

from pruners.testing import trained_like

# (model, example input shape): resnet18 is torchvision's ImageNet one, traced at 64x64 for speed.
MODELS = [
    ("digits_cnn", (1, 8, 8)),
    ("cifar_vgg16", (3, 32, 32)),
    ("resnet20", (3, 32, 32)),
    ("resnet56", (3, 32, 32)),
    ("mobilenetv2", (3, 32, 32)),
    ("resnet18", (3, 64, 64)),
    ("wrn_16_2", (3, 32, 32)),
    ("densenet121", (3, 32, 32)),  # concatenations
    ("regnet_x_400mf", (3, 32, 32)),  # grouped convs
]


def _build(name: str) -> nn.Module:
    return getattr(torchvision.models, name)() if name in ("densenet121", "regnet_x_400mf") else create_model(name)






def test_digits_cnn_groups_exact():
    groups = channel_groups(create_model("digits_cnn"), torch.randn(1, 1, 8, 8))
    bn = ("weight", "bias", "running_mean", "running_var")
    assert groups == [
        ChannelGroup(1, [], [], [("features.0", "weight", 1)], False, "model input"),
        ChannelGroup(16, [("features.0", "weight"), ("features.0", "bias")], [("features.1", p) for p in bn],
                     [("features.3", "weight", 1)], False, None),
        ChannelGroup(32, [("features.3", "weight"), ("features.3", "bias")], [("features.4", p) for p in bn],
                     [("features.7", "weight", 1)], False, None),
        # 64 channels of 2x2 after the last pool, flattened: Linear columns [4c, 4c+4) per channel.
        ChannelGroup(64, [("features.7", "weight"), ("features.7", "bias")], [("features.8", p) for p in bn],
                     [("classifier.0", "weight", 4)], False, None),
        ChannelGroup(64, [("classifier.0", "weight"), ("classifier.0", "bias")], [],
                     [("classifier.2", "weight", 1)], False, None),
        ChannelGroup(10, [("classifier.2", "weight"), ("classifier.2", "bias")], [], [], False, "model output"),
    ]  # fmt: skip


def test_resnet20_residual_streams_hold_every_producer_of_the_add():
    groups = channel_groups(create_model("resnet20"), torch.randn(1, 3, 32, 32))
    streams = [g for g in groups if g.residual]
    assert [g.size for g in streams] == [16, 32, 64]
    assert [p for p, _ in streams[0].producers] == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    # Stage 2's stream: the option-B shortcut conv feeds the add, so it is a producer too.
    assert [p for p, _ in streams[1].producers] == [
        "layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2", "layer2.2.conv2"
    ]
    assert [c for c, _, _ in streams[0].consumers] == [
        "layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1", "layer2.0.downsample.0"
    ]
    assert streams[2].consumers[-1] == ("last_linear", "weight", 1)
    # input + 3 streams + 9 block-inner groups + output
    assert len(groups) == 14 and sum(g.free for g in groups) == 12


def test_mobilenetv2_depthwise_conv_is_coupled_to_its_input_and_output():
    groups = channel_groups(create_model("mobilenetv2"), torch.randn(1, 3, 32, 32))
    hidden = next(g for g in groups if ("features.2.conv.0", "weight") in g.producers)
    assert hidden.size == 96 and hidden.free
    assert ("features.2.conv.3", "weight") in hidden.followers  # the depthwise conv
    assert hidden.consumers == [("features.2.conv.6", "weight", 1)]
    stream = next(g for g in groups if ("features.2.conv.6", "weight") in g.producers)
    assert stream.residual and [p for p, _ in stream.producers] == ["features.2.conv.6", "features.3.conv.6"]


def test_concat_lays_groups_side_by_side_and_a_split_hands_back_whole_groups():
    class CatSplit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 5, 1)
            self.bn = nn.BatchNorm2d(9)
            self.head = nn.Conv2d(9, 2, 1)
            self.left, self.right = nn.Conv2d(4, 2, 1), nn.Conv2d(5, 2, 1)

        def forward(self, x):
            y = self.bn(torch.cat([self.a(x), self.b(x)], 1))
            p, q = torch.split(y, [4, 5], dim=1)
            return self.head(y) + self.left(p) + self.right(q)

    groups = channel_groups(CatSplit(), torch.randn(1, 3, 4, 4))
    a = next(g for g in groups if ("a", "weight") in g.producers)
    b = next(g for g in groups if ("b", "weight") in g.producers)
    assert a.free and b.free and a.size == 4 and b.size == 5
    # The BatchNorm and the head read b's channels from position 4 on; the split gives each part back whole.
    assert ("bn", "weight") in b.followers and b.offset("bn", "weight") == 4 and b.offset("head", "weight") == 4
    assert a.offset("head", "weight") == 0 and ("left", "weight", 1) in a.consumers and ("right", "weight", 1) in b.consumers


def test_a_split_through_a_group_or_a_reshape_fixes_it():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.head = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 2, 1)
            self.b, self.tail = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)

        def forward(self, x):
            p, _ = self.a(x).chunk(2, dim=1)  # cuts a's six channels in two
            shuffled = self.b(x).view(1, 2, 3, 4, 4).transpose(1, 2).reshape(1, 6, 4, 4)  # a channel shuffle
            return self.head(p) + self.tail(shuffled)

    by_producer = {g.producers[0][0]: g for g in channel_groups(Odd(), torch.randn(1, 3, 4, 4)) if g.producers}
    assert "cuts through" in by_producer["a"].fixed_reason
    assert "reshape" in by_producer["b"].fixed_reason and by_producer["head"].fixed_reason


def test_grouped_convs_split_their_channels_in_equal_parts():
    model = torchvision.models.regnet_x_400mf()
    groups = channel_groups(model, torch.randn(1, 3, 64, 64))
    inner = next(g for g in groups if ("trunk_output.block1.block1-0.f.a.0", "weight") in g.producers)
    width, conv_groups = 32, 2  # RegNetX-400MF's first stage: 32 channels in groups of 16
    assert inner.free and inner.size == width and inner.chunks == conv_groups
    assert ("trunk_output.block1.block1-0.f.b.0", "weight", 1) in inner.consumers


@pytest.mark.parametrize("name,shape", MODELS, ids=[m for m, _ in MODELS])
def test_random_permutation_of_every_free_group_keeps_outputs(name, shape):
    torch.manual_seed(0)
    model = trained_like(_build(name))
    x = torch.randn(2, *shape)
    with torch.no_grad():
        before = model(x)
    groups = channel_groups(model, x)
    free = [g for g in groups if g.free]
    assert free
    g = torch.Generator().manual_seed(1)
    for group in free:  # a grouped conv's parts stay in place: channels move within each part
        per = group.size // group.chunks
        index_channels(model, group, torch.cat([q * per + torch.randperm(per, generator=g) for q in range(group.chunks)]))
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max().item() <= 1e-5 * max(1.0, before.abs().max().item())


def test_permuting_producers_alone_changes_outputs():
    """The check above can fail: a half-applied permutation is caught."""
    model = trained_like(create_model("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    group = next(g for g in channel_groups(model, x) if g.free and not g.residual)
    partial = ChannelGroup(group.size, group.producers, group.followers, [], False, None)
    index_channels(model, partial, torch.arange(group.size).flip(0))
    with torch.no_grad():
        assert (model(x) - before).abs().max().item() > 1e-2


def test_masked_model_permutes_masks_with_weights_and_compacts():
    model = trained_like(create_model("digits_cnn"))
    pruners.prepare(model, {"features.3.weight": 0.5}, "filter")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
    group = next(g for g in channel_groups(model, x) if ("features.3", "weight") in g.producers)
    index_channels(model, group, torch.randperm(32))
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)
    wm = pruners.masked_parameters(model)["features.3.weight"]
    assert torch.equal(model.features[3].weight == 0, ~wm.mask) and int(wm.mask.flatten(1).any(1).sum()) == 16
    # Compaction through the same call: keep the 10 first channels.
    index_channels(model, group, torch.arange(10))
    conv, bn, nxt = model.features[3], model.features[4], model.features[7]
    assert conv.weight.shape == (10, 16, 3, 3) and conv.out_channels == 10 and wm.mask.shape == (10, 16, 3, 3)
    assert bn.num_features == 10 and bn.running_var.shape == (10,)
    assert nxt.weight.shape == (64, 10, 3, 3) and nxt.in_channels == 10 and group.size == 10


def test_flatten_block_consumer_is_sliced_per_channel_block():
    model = trained_like(create_model("digits_cnn"))
    group = next(g for g in channel_groups(model, torch.randn(1, 1, 8, 8)) if ("features.7", "weight") in g.producers)
    w = model.classifier[0].weight.detach().clone()
    index_channels(model, group, torch.tensor([2, 5]))
    assert model.classifier[0].in_features == 8
    assert torch.equal(model.classifier[0].weight, torch.cat([w[:, 8:12], w[:, 20:24]], 1))


def test_bad_index_is_rejected():
    model = create_model("digits_cnn")
    group = channel_groups(model, torch.randn(1, 1, 8, 8))[1]
    with pytest.raises(ValueError, match="out of range"):
        index_channels(model, group, torch.tensor([0, 16]))
    with pytest.raises(ValueError, match="repeats"):
        index_channels(model, group, torch.tensor([1, 1]))
