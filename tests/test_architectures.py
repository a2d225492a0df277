"""Architectures users bring, under every method: each parameter is pruned exactly as the method
defines, or left dense with its reason logged once; nothing crashes.

The models live here, not in the zoo: depthwise and grouped convs, Conv1d, a grouped
ConvTranspose2d (filters along dim 1 of its weight), nn.MultiheadAttention (``in_proj_weight``
is a bare Parameter), nn.TransformerEncoderLayer, and a forward torch.fx cannot trace.
Expected masks are recomputed here from the weights (magnitudes, L1 norms, M:N groups, pattern
rules), not taken from the library. ``benchmarks/architecture_table.py`` reuses
``ARCHITECTURES`` and ``check_case`` to print what each method does to each architecture.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import pruners
from pruners.compact import compact
from pruners.layout import layout_of
from raysweep.speed.latency import trial_latency

# --------------------------------------------------------------------------- the models


class DepthwiseNet(nn.Module):
    """MobileNet-style: conv, depthwise 3x3, pointwise 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class GroupedNet(nn.Module):
    """ResNeXt-style grouped 3x3 conv (2 groups of 4 input channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, groups=2), nn.ReLU()
        )
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class Conv1dNet(nn.Module):
    """A 1-D signal model: 3-D weights (out, in, k), flattened into the head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(8 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class ConvTransposeNet(nn.Module):
    """A decoder: a grouped ConvTranspose2d stores (in, out / groups, kH, kW)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.bn = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.bn(self.up(torch.relu(self.enc(x))))))


class AttentionNet(nn.Module):
    """nn.MultiheadAttention between two Linears, on (batch, tokens, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a, _ = self.attn(h, h, h)
        return self.head(a.mean(1))


class EncoderNet(nn.Module):
    """One nn.TransformerEncoderLayer (attention + feed-forward) between two Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.block = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x)).mean(1))


class UntraceableNet(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if h.mean() > 0:  # data-dependent branch
            h = torch.relu(self.b(h))
        return self.head(h.mean((2, 3)))


@dataclass(frozen=True)
class Arch:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # one batch


ARCHITECTURES: dict[str, Arch] = {
    "depthwise conv": Arch(DepthwiseNet, (2, 3, 8, 8)),
    "grouped conv": Arch(GroupedNet, (2, 3, 8, 8)),
    "Conv1d": Arch(Conv1dNet, (2, 4, 16)),
    "ConvTranspose2d": Arch(ConvTransposeNet, (2, 3, 8, 8)),
    "MultiheadAttention": Arch(AttentionNet, (2, 5, 8)),
    "TransformerEncoderLayer": Arch(EncoderNet, (2, 5, 8)),
    "untraceable forward": Arch(UntraceableNet, (2, 3, 8, 8)),
}
TARGETS: dict[str, object] = {"irregular": 0.5, "filter": 0.5, "stripe": 0.5, "pattern": 0.7, "nm": "m4n2", "channel": 0.5}
METHODS = list(TARGETS)
assert set(METHODS) == set(pruners.list_methods()), "a new method needs its exactness check here"

# --------------------------------------------------------------------------- expected masks


def _removed(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bool: the round-half-up(ratio * n) lowest scores (scores here are distinct)."""
    flat = scores.reshape(-1)
    k = math.floor(ratio * flat.numel() + 0.5)
    out = torch.zeros(flat.numel(), dtype=torch.bool)
    out[torch.argsort(flat)[:k]] = True
    return out.reshape(scores.shape)


def _irregular(w: torch.Tensor, target: float) -> torch.Tensor:
    return ~_removed(w.abs(), target)


def _filter(w: torch.Tensor, target: float) -> torch.Tensor:
    gone = _removed(w.abs().flatten(1).sum(1), target)
    return (~gone).view(-1, *[1] * (w.dim() - 1)).expand(w.shape)


def _stripe(w: torch.Tensor, target: float) -> torch.Tensor:
    gone = _removed(w.abs().sum(1), target)  # one score per (out, *kernel) position
    return (~gone).unsqueeze(1).expand(w.shape)


def _nm(w: torch.Tensor, target: str) -> torch.Tensor:
    m, n = pruners.parse_nm(target)
    moved = w.abs().movedim(1, -1)
    groups = moved.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(n, dim=1).indices, True)
    return keep.reshape(moved.shape).movedim(-1, 1)


EXPECTED: dict[str, Callable[[torch.Tensor, object], torch.Tensor]] = {
    "irregular": _irregular, "filter": _filter, "stripe": _stripe, "nm": _nm,
}  # fmt: skip


def _check_pattern(name: str, mask: torch.Tensor, target: float) -> None:
    """PatDNN: every 3x3 kernel keeps 4 entries including the centre, or (connectivity) none;
    round((t - 5/9) / (4/9) * kernels) kernels go whole."""
    kernels = mask.reshape(-1, 9)
    kept = kernels.sum(1)
    empty = int((kept == 0).sum())
    assert empty == math.floor((target - 5 / 9) / (4 / 9) * kernels.shape[0] + 0.5), name
    assert bool(((kept == 4) & kernels[:, 4] | (kept == 0)).all()), f"{name}: a kernel is not a 4-entry pattern with its centre"


def _check_channel(name: str, rows_dead: torch.Tensor, target: float, chunks: int) -> None:
    """round(t * channels / chunks) channels go from each part of a grouped conv's channels."""
    per = rows_dead.numel() // chunks
    counts = rows_dead.reshape(chunks, per).sum(1)
    assert counts.tolist() == [math.floor(target * per + 0.5)] * chunks, f"{name}: {counts.tolist()} channels removed per part"


# A producer whose channels a grouped conv reads or emits: its channels go in this many equal parts.
CHANNEL_CHUNKS = {("grouped conv", "features.0.weight"): 2, ("grouped conv", "features.2.weight"): 2}

# --------------------------------------------------------------------------- checking one case


@dataclass
class CaseResult:
    """What prepare did to one architecture under one method, each part verified."""

    pruned: list[str] = field(default_factory=list)  # own masks, exact
    derived: list[str] = field(default_factory=list)  # masked only through pruned channels, exact
    dense: dict[str, str] = field(default_factory=dict)  # left dense, and why (logged once each)
    report: pruners.PruneReport | None = None
    log: list[str] = field(default_factory=list)


def _rows_dead(mask: torch.Tensor) -> torch.Tensor:
    return ~mask.reshape(mask.shape[0], -1).any(1)


def _derived(model: nn.Module, name: str, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mask a tensor gets from its producers' dead filters: rows (``follows``) and input columns
    (``reads``; a grouped conv's columns per group, a flattened input's in blocks)."""
    wm = pruners.masked_parameters(model)[name]
    module = model.get_submodule(name.rpartition(".")[0])
    shape = masks[name].shape
    rows = torch.ones(shape[0], dtype=torch.bool)
    for src, offset, _ in wm.follows:
        dead = _rows_dead(masks[src])
        rows[offset : offset + dead.numel()] &= ~dead
    out = rows.view(-1, *[1] * (len(shape) - 1)).expand(shape).clone()
    for src, offset, block in wm.reads:
        dead = _rows_dead(masks[src])
        channels = torch.ones(shape[1] // block * getattr(module, "groups", 1), dtype=torch.bool)
        channels[offset : offset + dead.numel()] = ~dead
        if getattr(module, "groups", 1) > 1:  # row o of group q reads channels q * per ... (q + 1) * per - 1
            per, g = shape[1], module.groups
            q = torch.arange(shape[0]) // (shape[0] // g)
            cols = channels.view(g, per)[q]
        else:
            cols = channels.repeat_interleave(block).expand(shape[0], -1)
        out &= cols.reshape(shape[0], shape[1], *[1] * (len(shape) - 2))
    return out


def check_case(arch_name: str, method: str, caplog: pytest.LogCaptureFixture | None = None) -> CaseResult:
    """Prepare ``arch_name`` with ``{"*": TARGETS[method]}`` and verify every parameter (AssertionError if not)."""
    arch = ARCHITECTURES[arch_name]
    torch.manual_seed(0)
    model = arch.build()
    x = torch.randn(arch.input_shape)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    handler, logger = _ListHandler(), logging.getLogger("pruners")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # the dense layers are named at INFO
    try:
        report = pruners.prepare(model, {"*": TARGETS[method]}, method, example_input=x)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    result = CaseResult(report=report, log=handler.messages)
    model(x)  # still runs
    wms = pruners.masked_parameters(model)
    effective = {n: getattr(model.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]).detach() for n in before}
    # Every mask in the methods' layout (out, in / groups, *kernel): a transposed conv's regrouped.
    layouts = {n: layout_of(model.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in before}
    masks = {n: layouts[n].view(wm.mask) for n, wm in wms.items()}
    target = TARGETS[method]
    for name, w0 in before.items():
        if name not in wms:
            assert torch.equal(effective[name], w0), f"{name} changed without a mask"
            if w0.dim() >= 2:
                assert name in report.skipped, f"{name} was neither pruned nor named as dense"
                result.dense[name] = report.skipped[name]
            continue
        wm, mask, w = wms[name], masks[name], layouts[name].view(w0)
        derived = _derived(model, name, masks) if wm.follows or wm.reads else torch.ones_like(mask)
        if not wm.method:
            assert torch.equal(mask, derived), f"{name}: derived mask is not exactly its producers' dead channels"
            result.derived.append(name)
            if name in report.skipped:
                result.dense[name] = report.skipped[name]
        elif method in EXPECTED:
            assert torch.equal(mask, EXPECTED[method](w, target) & derived), f"{name}: {method} mask not exact"
            result.pruned.append(name)
        elif method == "pattern":
            _check_pattern(name, mask, float(target))
            result.pruned.append(name)
        else:  # channel: whole output channels, the round(t * n) lowest per part, plus what producers kill
            dead = _rows_dead(mask)
            _check_channel(name, dead, float(target), CHANNEL_CHUNKS.get((arch_name, name), 1))
            assert torch.equal(mask, (~dead).view(-1, *[1] * (mask.dim() - 1)) & derived), name
            result.pruned.append(name)
        assert torch.equal(effective[name], w0 * wm.mask), f"{name}: effective weight is not weight * mask"
    if method == "pattern" and result.pruned:
        patterns = {tuple(k.tolist()) for n in result.pruned for k in masks[n].reshape(-1, 9) if k.any()}
        assert len(patterns) <= 8, f"{len(patterns)} patterns in use; PatDNN's library holds 8"
    for name in report.skipped:  # each layer left dense is named once, with its reason
        hits = [m for m in handler.messages if re.search(rf"\b{re.escape(name)} \(", m)]
        assert len(hits) == 1 and report.skipped[name] in hits[0], (name, hits)
    return result


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_parameter_is_pruned_exactly_or_named_dense_once(arch, method):
    result = check_case(arch, method)
    assert result.pruned or result.dense, "nothing pruned and nothing named"


# What must be pruned (own masks) and what must be named dense, per case: the exactness of each
# is check_case's; these pin down which layers each method can handle.
PRUNED = {
    ("Conv1d", m): ["features.0.weight", "features.3.weight"] for m in ("irregular", "filter", "stripe", "nm", "channel")
} | {
    ("ConvTranspose2d", m): ["up.weight"] for m in ("irregular", "filter", "stripe", "nm", "pattern")
} | {
    ("MultiheadAttention", m): ["attn.out_proj.weight"] for m in ("irregular", "filter", "stripe", "nm")
} | {
    ("TransformerEncoderLayer", m): ["block.self_attn.out_proj.weight", "block.linear1.weight", "block.linear2.weight"]
    for m in ("irregular", "filter", "stripe", "nm")
} | {("depthwise conv", "pattern"): ["features.0.weight", "features.3.weight"],
     ("grouped conv", "nm"): ["features.2.weight"], ("grouped conv", "channel"): ["features.0.weight", "features.2.weight"]}  # fmt: skip
DENSE = {
    ("Conv1d", "pattern"): {"features.0.weight": "3x3 kernels (got 1-D kernels (3,))"},
    ("depthwise conv", "nm"): {"features.3.weight": "input dimension 1 is not a multiple of 4"},
    ("ConvTranspose2d", "channel"): {"up.weight": "transposed conv"},
    ("MultiheadAttention", "channel"): {"attn.out_proj.weight": "inside MultiheadAttention attn"},
    ("TransformerEncoderLayer", "channel"): {"block.linear1.weight": "inside TransformerEncoderLayer block"},
    ("untraceable forward", "channel"): {"a.weight": "torch.fx cannot trace UntraceableNet", "b.weight": "cannot trace"},
} | {
    ("MultiheadAttention", m): {"attn.in_proj_weight": "MultiheadAttention attn keeps its fused q/k/v projection as a bare Parameter"} for m in METHODS
} | {
    ("TransformerEncoderLayer", m): {"block.self_attn.in_proj_weight": "bare Parameter"} for m in METHODS
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(set(PRUNED) | set(DENSE)), ids=lambda c: f"{c[0]}-{c[1]}")
def test_which_layers_each_method_handles(case):
    result = check_case(*case)
    assert set(PRUNED.get(case, [])) <= set(result.pruned), result.pruned
    for name, why in DENSE.get(case, {}).items():
        assert why in result.dense.get(name, ""), (name, result.dense)


def test_convtranspose_filters_are_its_output_channels_and_a_dead_one_outputs_zero():
    """Filter pruning on (in, out / groups, kH, kW) removes output channels: with its bias and the
    BatchNorm after it masked, a removed channel is exactly 0 at the BatchNorm's output."""
    torch.manual_seed(0)
    model = ConvTransposeNet()
    x = torch.randn(2, 3, 8, 8)
    pruners.prepare(model, {"up.weight": 0.5}, "filter")
    w = model.up.weight.detach()  # (8 in, 4 out per group, 3, 3), groups=2
    dead_out = [g * 4 + j for g in range(2) for j in range(4) if not w[g * 4 : (g + 1) * 4, j].any()]
    assert len(dead_out) == 4 and not model.up.bias.detach()[dead_out].any()
    seen = {}
    model.bn.register_forward_hook(lambda m, i, o: seen.update(out=o))
    model.train()(x)
    assert not seen["out"][:, dead_out].any() and seen["out"][:, [c for c in range(8) if c not in dead_out]].abs().sum() > 0
    assert model.up.weight.detach().reshape(8, -1).any(1).all(), "input channels must stay"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_masked_weights_stay_zero_after_optimizer_steps(arch, method):
    spec = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = spec.build().train()
    x = torch.randn(spec.input_shape)
    pruners.prepare(model, {"*": TARGETS[method]}, method, example_input=x)
    masked = pruners.masked_parameters(model)
    if not masked:
        pytest.skip(f"{method} masks nothing in {arch}")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    for name, wm in masked.items():
        mod_name, _, tensor = name.rpartition(".")
        value = getattr(model.get_submodule(mod_name), tensor).detach()
        assert not value[~wm.mask].any(), f"{name}: a masked weight moved off zero"


def test_untraceable_model_compaction_and_latency_say_why_they_are_skipped(caplog):
    # What a trial records after its last epoch (imported here: the loop pulls in the whole trial stack).
    from raysweep.trial.loop import _latency

    torch.manual_seed(0)
    model = UntraceableNet().eval()
    x = torch.randn(2, 3, 8, 8)
    pruners.prepare(model, {"*": 0.5}, "filter")
    with pytest.raises(ValueError, match="cannot compact: torch.fx cannot trace UntraceableNet .*control flow"):
        compact(model, x)
    with caplog.at_level(logging.WARNING, logger="raysweep.speed.latency"):
        out = trial_latency(model, None, (3, 8, 8), warmup=0, repeats=1)
    assert {"latency_ms_b1", "latency_ms_b64", "speedup", "params_compact"} <= set(out)
    assert all(math.isnan(v) for v in out.values())
    assert caplog.text.count("latency not measured for UntraceableNet") == 1 and "cannot trace" in caplog.text
    figures = _latency(model, (3, 8, 8), SimpleNamespace(cpus_per_worker=1))
    assert set(figures) == {"latency_ms_b1", "latency_ms_b64", "speedup", "params_compact"}
    assert all(math.isnan(v) for v in figures.values())
    assert pruners.is_masked(model)  # the model is left as it was


def test_untraceable_model_nm_permutation_is_skipped_with_the_reason():
    from pruners.nm_permute import permute_for_nm

    torch.manual_seed(0)
    model = UntraceableNet()
    report = permute_for_nm(model, {"*": "m4n2"}, torch.zeros(1, 3, 8, 8), time_budget_s=None, max_rounds=1)
    assert not report.groups and "torch.fx cannot trace UntraceableNet" in report.skipped["b.weight"]


@pytest.mark.parametrize("arch", ["depthwise conv", "grouped conv", "Conv1d", "ConvTranspose2d", "MultiheadAttention",
                                  "TransformerEncoderLayer"])  # fmt: skip
def test_traceable_models_compact_exactly(arch):
    """Compaction removes what it may (free channel groups) and computes the masked model's outputs."""
    spec = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = spec.build().eval()
    x = torch.randn(spec.input_shape)
    pruners.prepare(model, {"*": 0.5}, "filter", example_input=x)
    small, report = compact(model, x)
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() <= 1e-5
    assert report.max_abs_diff <= 1e-5
    if arch in ("depthwise conv", "grouped conv", "Conv1d"):
        assert report.channels_removed > 0


def test_exact_target_on_in_proj_weight_is_a_clear_error():
    """Naming MultiheadAttention's bare Parameter explicitly is a config mistake, said plainly."""
    with pytest.raises(ValueError, match="in_proj_weight' is a MultiheadAttention parameter, not prunable"):
        pruners.prepare(AttentionNet(), {"attn.in_proj_weight": 0.5}, "irregular")
