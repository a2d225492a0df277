"""N:M channel permutations: the search's objective and gains are exact, the search is never
worse than the identity and finds small optima, and whole-model permutations keep outputs."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import pruners
from pruners.nm_permute import permute_for_nm
from pruners.permutation_search import (
    NMTerm,
    _Search,
    nm_term,
    retained_magnitude,
    search_permutation,
    search_terms,
)
from pruners.ratio_config import prunable_modules
from raysweep.models import create_model

torch.set_num_threads(1)


def kept(weight: torch.Tensor, target: str) -> float:
    """|w| that pruners' own nm mask keeps (the reference the search must agree with)."""
    w = weight.detach()
    return float((w.abs() * pruners.compute_mask("nm", w, target)).sum(dtype=torch.float64))


def best_by_brute_force(terms: list[NMTerm], m: int) -> float:
    """Exhaustive optimum over all partitions of 8 channels into two groups of 4."""
    c = terms[0].mags.shape[0]
    assert (c, m) == (8, 4)
    values = []
    for first in itertools.combinations(range(1, c), 3):
        group = [0, *first]
        perm = torch.tensor(group + [i for i in range(c) if i not in group])
        values.append(retained_magnitude(terms, perm))
    return max(values)


# ----------------------------------------------------------------------------- the objective
@pytest.mark.parametrize("target", ["m4n2", "m8n4", "m4n1"])
def test_retained_magnitude_is_what_nm_keeps(target):
    gen = torch.Generator().manual_seed(0)
    conv = torch.randn(5, 16, 3, 3, generator=gen)
    linear = torch.randn(7, 32, generator=gen)
    perm = torch.randperm(16, generator=gen)
    assert retained_magnitude([nm_term(conv, target)]) == pytest.approx(kept(conv, target), rel=1e-6)
    assert retained_magnitude([nm_term(conv, target)], perm) == pytest.approx(kept(conv[:, perm], target), rel=1e-6)
    # a linear reading 16 channels of 2 inputs each (a flatten after a 1x2 feature map)
    cols = (perm[:, None] * 2 + torch.arange(2)).reshape(-1)
    term = nm_term(linear, target, block=2)
    assert retained_magnitude([term], perm) == pytest.approx(kept(linear[:, cols], target), rel=1e-6)


def test_nm_term_rejects_what_no_permutation_can_fix():
    with pytest.raises(ValueError, match="not a multiple of 4"):
        nm_term(torch.randn(4, 6, 3, 3), "m4n2")
    with pytest.raises(ValueError, match="straddle"):
        nm_term(torch.randn(4, 8 * 3), "m4n2", block=3)


def test_swap_gains_match_brute_force_for_mixed_terms():
    """Fast (b = 1) and generic (b = 2) paths, two group sizes, after swaps and a jump."""
    gen = torch.Generator().manual_seed(1)
    conv = torch.randn(6, 16, 3, 3, generator=gen)
    linear = torch.randn(10, 32, generator=gen)
    terms = [nm_term(conv, "m4n2"), nm_term(conv, "m8n4"), nm_term(linear, "m4n2", block=2)]
    state = _Search(terms, torch.device("cpu"))
    for _ in range(10):
        state.random_swap(gen)
    state.set_perm(torch.randperm(16, generator=gen))
    for _ in range(3):
        a, c, _ = state.best_swap()
        state.swap(a, c)
    base = retained_magnitude(terms, state.perm)
    for a in range(16):
        for c in range(16):
            if a == c:
                continue
            perm = state.perm.clone()
            pa, pc = int(state.pos[a]), int(state.pos[c])
            perm[pa], perm[pc] = c, a
            assert float(state.gains[a, c]) == pytest.approx(retained_magnitude(terms, perm) - base, abs=1e-3)


# ----------------------------------------------------------------------------- the search
def test_search_finds_the_obvious_regrouping():
    """Channels 0-3 big, 4-7 small: 2:4 keeps only two big ones per row until they are split."""
    w = torch.ones(3, 8, 1, 1)
    w[:, :4] = 10.0
    result = search_permutation(w, "m4n2", time_budget_s=None, max_rounds=0)
    assert result.before == pytest.approx(3 * (20 + 2))
    assert result.after == pytest.approx(3 * 40)
    first = set(result.perm[:4].tolist())
    assert len(first & {0, 1, 2, 3}) == 2
    assert result.stopped == "converged"


@pytest.mark.parametrize("seed", range(4))
def test_search_reaches_the_exhaustive_optimum_on_8_channels(seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 8, 3, 3, generator=gen)
    terms = [nm_term(w, "m4n2")]
    result = search_terms(terms, time_budget_s=None, max_rounds=20, seed=seed)
    assert result.after >= result.before
    assert result.after == pytest.approx(best_by_brute_force(terms, 4), rel=1e-9)
    assert result.after == pytest.approx(kept(w[:, result.perm], "m4n2"), rel=1e-6)
    assert sorted(result.perm.tolist()) == list(range(8))


@pytest.mark.parametrize("window", [32, 128])
def test_search_is_never_worse_and_deterministic(window):
    """Whole-layer search (64 channels <= 128) and windowed search (32-channel windows)."""
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(48, 64, generator=gen)
    runs = [search_permutation(w, "m4n2", time_budget_s=None, max_rounds=5, window=window, seed=3) for _ in range(2)]
    assert torch.equal(runs[0].perm, runs[1].perm)
    assert runs[0].after == runs[1].after > runs[0].before
    assert runs[0].after == pytest.approx(kept(w[:, runs[0].perm], "m4n2"), rel=1e-6)
    assert (runs[0].rounds, runs[0].stopped) == (5, "rounds")
    other = search_permutation(w, "m4n2", time_budget_s=None, max_rounds=5, window=window, seed=4)
    assert other.after > other.before


def test_search_stops_on_its_time_budget():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(5))
    result = search_permutation(w, "m4n2", time_budget_s=0.0, max_rounds=1000, window=32)
    assert result.stopped == "time"
    assert result.rounds == 0
    assert result.after >= result.before


def test_single_group_is_left_alone():
    w = torch.randn(3, 4, 3, 3)
    result = search_permutation(w, "m4n2")
    assert torch.equal(result.perm, torch.arange(4))
    assert result.after == result.before


# ----------------------------------------------------------------------------- whole models
def _randomize_bn(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.normal_(0, 0.2, generator=gen)


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    dataset = "digits" if name == "digits_cnn" else "cifar10"
    model = create_model(name, num_classes=10, dataset=dataset)
    _randomize_bn(model, 1)
    shape = (1, 8, 8) if name == "digits_cnn" else (3, 32, 32)
    return model.eval(), torch.randn(4, *shape, generator=torch.Generator().manual_seed(2))


def _kept_per_layer(model: nn.Module, names: list[str], target: str) -> dict[str, float]:
    modules = prunable_modules(model)
    return {n: kept(modules[n].weight, target) for n in names}


def _nm_kept(model: nn.Module, names: list[str], target: str) -> float:
    return sum(_kept_per_layer(model, names, target).values())


FAST = {"time_budget_s": None, "max_rounds": 1, "window": 64}


@pytest.mark.parametrize(
    "name,target",
    [("digits_cnn", "m4n2"), ("digits_cnn", "m8n4"), ("resnet20", "m4n2"), ("resnet20", "m8n4"), ("vgg16", "m4n2")],
)
def test_permuted_models_compute_the_same_function(name, target):
    model, x = _model(name)
    with torch.no_grad():
        before = model(x)
    names = pruners.prunable_parameters(model)
    dense = _kept_per_layer(model, names, target)
    report = permute_for_nm(model, {"*": target}, x[:1], **FAST)
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before, after, atol=1e-5, rtol=0)
    # every N:M layer is either permuted or skipped with a reason
    assert set(report.layers) | set(report.skipped) == set(names)
    assert not set(report.layers) & set(report.skipped)
    # the report's figures are what nm keeps in the model before and after, layer by layer
    permuted = _kept_per_layer(model, names, target)
    for n in names:
        layer = report.layers.get(n)
        if layer is None:
            assert permuted[n] == pytest.approx(dense[n], rel=1e-9)
        else:
            assert (layer.before, layer.after) == (pytest.approx(dense[n], rel=1e-6), pytest.approx(permuted[n], rel=1e-6))
            assert layer.after >= layer.before or len(report.groups[layer.group].layers) > 1
    assert report.before == pytest.approx(sum(g.before for g in report.groups), rel=1e-12)
    assert report.after > report.before
    assert all(g.after >= g.before and g.stopped in ("rounds", "converged") for g in report.groups)


def test_digits_cnn_report_names_what_it_skips():
    model, x = _model("digits_cnn")
    report = permute_for_nm(model, {"*": "m4n2"}, x[:1], **FAST)
    assert report.skipped == {
        "features.0.weight": "input channels are fixed: model input",
        "classifier.0.weight": "channel order does not matter: each group of 4 lies inside one channel's block of 4 inputs",
    }
    assert list(report.layers) == ["features.3.weight", "features.7.weight", "classifier.2.weight"]
    model8, x8 = _model("digits_cnn")
    report8 = permute_for_nm(model8, {"*": "m8n4"}, x8[:1], **FAST)
    assert "classifier.0.weight" in report8.layers  # groups of 8 span two channels of 4 inputs
    assert set(report8.skipped) == {"features.0.weight"}


def test_resnet_stream_sums_its_consumers():
    model, x = _model("resnet20")
    report = permute_for_nm(model, {"*": "m4n2"}, x[:1], **FAST)
    stream = report.groups[0]
    assert stream.residual and stream.channels == 16
    assert stream.layers == [
        "layer1.0.conv1.weight", "layer1.1.conv1.weight", "layer1.2.conv1.weight",
        "layer2.0.conv1.weight", "layer2.0.downsample.0.weight",
    ]  # fmt: skip
    assert stream.after == pytest.approx(sum(report.layers[n].after for n in stream.layers), rel=1e-9)
    assert len(report.groups) == 1 + 9 + 2  # three streams, nine blocks' inner convs
    assert report.skipped == {"conv1.weight": "input channels are fixed: model input"}


def test_only_targeted_consumers_count_and_others_keep_their_function():
    model, x = _model("resnet20")
    with torch.no_grad():
        before = model(x)
    report = permute_for_nm(model, {"layer1.1.conv1.weight": "m4n2", "layer1.0.conv2.weight": 0.5}, x[:1], **FAST)
    assert list(report.layers) == ["layer1.1.conv1.weight"]
    assert report.groups[0].layers == ["layer1.1.conv1.weight"] and report.groups[0].residual
    with torch.no_grad():
        assert torch.allclose(before, model(x), atol=1e-5, rtol=0)


def test_masked_model_at_fraction_zero_is_permuted_with_its_masks():
    model, x = _model("digits_cnn")
    with torch.no_grad():
        before = model(x)
    pruners.prepare(model, {"*": "m4n2"}, "nm", fraction=0.0)
    report = permute_for_nm(model, {"*": "m4n2"}, x[:1], **FAST)
    with torch.no_grad():
        assert torch.allclose(before, model(x), atol=1e-5, rtol=0)
    pruners.step(model, fraction=1.0)
    pruners.squash(model)
    assert _nm_kept(model, list(report.layers), "m4n2") == pytest.approx(report.after, rel=1e-6)


class _Straddle(nn.Module):
    """conv 1 -> 8 on a 3x1 image, flatten (8 channels of 3 inputs), Linear 24 -> 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(1, 8, 1)
        self.conv = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(torch.relu(self.conv0(x)))).flatten(1))


def test_groups_straddling_channel_blocks_are_reported_not_searched():
    model = _Straddle().eval()
    x = torch.randn(2, 1, 3, 1)
    with torch.no_grad():
        before = model(x)
    report = permute_for_nm(model, {"conv.weight": "m4n2", "fc.weight": "m4n2"}, x[:1], **FAST)
    assert report.skipped["fc.weight"].startswith("group not searched: groups of 4 straddle")
    assert "conv.weight" in report.layers
    with torch.no_grad():
        assert torch.allclose(before, model(x), atol=1e-6, rtol=0)


def test_wrapped_models_are_refused():
    model, x = _model("digits_cnn")
    with pytest.raises(TypeError, match="before wrapping"):
        permute_for_nm(nn.DataParallel(model), {"*": "m4n2"}, x[:1])
