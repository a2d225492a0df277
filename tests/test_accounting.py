"""Sparsity and MAC accounting on hand-built models with known zeros."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from pruners.accounting import count_macs, layer_table, sparsity_report
from pruners.masking import prepare


class Net(nn.Module):
    """conv(3->4, 3x3) + bn + conv(4->4, 3x3, stride 2) + linear(4*4*4 -> 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.block0 = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 4, 3, stride=2, padding=1),
        )
        self.classifier = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block0(x).flatten(1))


def _filled() -> Net:
    """Every parameter 1, then known zeros: 27 in conv0, 36 in conv1, 64 in the linear."""
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
        net.block0[0].weight[0].zero_()  # 1 filter of 27 weights
        net.block0[3].weight[:, 0].zero_()  # input channel 0 of every filter: 4 * 9 = 36
        net.classifier.weight[1].zero_()  # 64
        net.block0[1].weight[:2].zero_()  # 2 BN weights (counted by the seed's sparsity only)
        net.block0[3].bias[0] = 0.0  # a zero bias: in params_remaining, never in sparsity
    return net


def test_sparsity_exact_on_known_zeros():
    rep = sparsity_report(_filled())
    conv, lin = 108 + 144, 320
    assert rep["prunable_total"] == conv + lin
    assert rep["prunable_remaining"] == conv + lin - 27 - 36 - 64
    assert rep["sparsity"] == pytest.approx((27 + 36 + 64) / (conv + lin))
    assert rep["sparsity_conv"] == pytest.approx((27 + 36) / conv)
    bn = 4 + 4  # weight + bias
    total = conv + lin + bn + 4 + 5  # conv1 bias, linear bias
    assert rep["params_total"] == total
    assert rep["params_remaining"] == total - 27 - 36 - 64 - 2 - 1
    # seed: every parameter whose name does not end in 'bias' (BN weight included)
    assert rep["sparsity_seed"] == pytest.approx((27 + 36 + 64 + 2) / (conv + lin + 4))
    assert "macs_dense" not in rep


def test_sparsity_uses_effective_masked_weights():
    torch.manual_seed(0)
    net = Net()
    prepare(net, {"block0.0.weight": 0.5, "classifier.weight": 0.25}, "irregular", enforce=False)
    # Not enforced (regrow): make the originals nonzero again, so only the effective weight counts.
    with torch.no_grad():
        net.block0[0].parametrizations.weight.original.add_(1e-3)
    rep = sparsity_report(net)
    assert rep["prunable_remaining"] == rep["prunable_total"] - 80  # 0.25 * 320 still hard-zero
    net.block0[0].parametrizations.weight[0].enforced.fill_(True)
    rep = sparsity_report(net)
    assert rep["prunable_remaining"] == rep["prunable_total"] - 80 - 54
    # no parameter counted twice (original + effective): same totals as an unmasked net
    assert rep["params_total"] == sparsity_report(Net())["params_total"]


def test_sparsity_conv_is_nan_without_convs():
    rep = sparsity_report(nn.Sequential(nn.Linear(4, 3)))
    assert math.isnan(rep["sparsity_conv"]) and rep["sparsity"] == 0.0


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def test_macs_dense_equal_flop_counter_and_remaining_exact():
    net, x = _filled(), torch.randn(2, 3, 8, 8)
    macs = count_macs(net, x)
    assert set(macs) == {"block0.0.weight", "block0.3.weight", "classifier.weight"}
    # conv0: 2*8*8 output positions x 108 weights; conv1: 2*4*4 x 144; linear: 2 rows x 320
    assert macs["block0.0.weight"] == (128 * 108, 128 * 81)
    assert macs["block0.3.weight"] == (32 * 144, 32 * 108)
    assert macs["classifier.weight"] == (2 * 320, 2 * 256)
    dense = sum(d for d, _ in macs.values())
    assert 2 * dense == _flops(net, x)
    rep = sparsity_report(net, x)
    assert rep["macs_dense"] == dense
    assert rep["macs_remaining"] == 128 * 81 + 32 * 108 + 2 * 256
    assert rep["flops_ratio"] == pytest.approx(rep["macs_remaining"] / dense)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), (2, 8, 7, 7)),  # depthwise
        (nn.Conv2d(8, 12, 3, stride=2, groups=4), (2, 8, 9, 9)),  # grouped, strided
        (nn.Conv1d(4, 6, 5), (3, 4, 20)),
        (nn.ConvTranspose2d(4, 6, 3, stride=2), (2, 4, 5, 5)),
        (nn.Linear(7, 3), (2, 5, 7)),  # extra leading dims: 10 rows
    ],
)
def test_macs_match_flop_counter(layer: nn.Module, shape: tuple):
    x = torch.randn(*shape)
    dense, remaining = count_macs(layer, x)["weight"]
    assert 2 * dense == _flops(layer, x)
    assert remaining == dense


def test_count_macs_leaves_train_mode_and_bn_stats_alone():
    net = Net().train()
    net.block0[2].eval()  # a mixed state must be restored as it was
    stats = net.block0[1].running_mean.clone()
    count_macs(net, torch.randn(2, 3, 8, 8))
    assert net.training and net.block0[0].training and not net.block0[2].training
    assert torch.equal(net.block0[1].running_mean, stats)


def test_layer_table_rows():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    report = prepare(net, {"0.weight": "m4n2", "3.weight": "m4n2"}, "nm")
    assert "0.weight" in report.skipped
    x = torch.randn(1, 3, 6, 6)
    rows = layer_table(net, x)
    assert [r["name"] for r in rows] == ["0.weight", "3.weight"]
    conv, lin = rows
    assert conv["kind"] == "conv" and conv["shape"] == (4, 3, 3, 3) and conv["numel"] == 108
    assert conv["method"] is None and conv["target"] is None and conv["zeros"] == 0
    assert conv["skipped"] == report.skipped["0.weight"]
    assert conv["macs_dense"] == conv["macs_remaining"] == 16 * 108
    assert lin["kind"] == "linear" and lin["method"] == "nm" and lin["target"] == "m4n2"
    assert lin["zeros"] == 160 and lin["sparsity"] == 0.5 and lin["skipped"] is None
    assert (lin["macs_dense"], lin["macs_remaining"]) == (320, 160)
    no_macs = layer_table(net, skipped={})
    assert no_macs[0]["macs_dense"] is None and no_macs[0]["skipped"] is None
