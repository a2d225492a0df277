"""Allocation families: exact global counts, ERK by hand, LAMP and global magnitude by brute force."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import pruners
from pruners.allocation import (
    SensitivityTable,
    allocate,
    get_family,
    lamp_scores,
    list_families,
    resolve_allocation,
)
from pruners.selection import count_for_ratio

FAMILIES = ["uniform", "erk", "global_magnitude", "lamp"]


class Tiny(nn.Module):
    """conv (4, 2, 3, 3) = 72 weights, fc1 (4, 16) = 64, fc2 (2, 4) = 8: 144 in all."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.fc1 = nn.Linear(16, 4, bias=False)
        self.fc2 = nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.conv(x), 2).flatten(1)
        return self.fc2(self.fc1(x))


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in pruners.ratio_config.prunable_modules(model).items()}


def removed_count(ratios: dict[str, float], weights: dict[str, torch.Tensor]) -> int:
    return sum(count_for_ratio(r, weights[n].numel()) for n, r in ratios.items())


@pytest.fixture
def digits_weights() -> dict[str, torch.Tensor]:
    from raysweep.models import create_model

    torch.manual_seed(0)
    return weights_of(create_model("digits_cnn", dataset="digits"))


def test_registry_names_and_nearest_name():
    assert list_families() == ["uniform", "erk", "global_magnitude", "lamp", "sensitivity"]
    assert get_family("lamp").needs_weights and not get_family("erk").needs_weights
    with pytest.raises(ValueError, match="did you mean 'lamp'"):
        get_family("lampp")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("target", [0.0, 0.37, 0.8, 0.95, 1.0])
def test_global_count_is_exact_and_pruning_removes_it(family, target, digits_weights):
    fixed = {"features.0.weight": 0.0}
    ratios = allocate(family, digits_weights, target, fixed=fixed)
    total = sum(w.numel() for w in digits_weights.values())
    assert list(ratios) == list(digits_weights) and ratios["features.0.weight"] == 0.0
    assert all(0.0 <= r <= 1.0 for r in ratios.values())
    reachable = min(count_for_ratio(target, total), total - 144)  # the first conv (144 weights) stays dense
    assert removed_count(ratios, digits_weights) == reachable


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["add", "mul"])
def test_perturbed_allocations_keep_the_exact_count_and_move_the_named_layers(family, mode, digits_weights):
    fixed = {"features.0.weight": 0.0}
    base = allocate(family, digits_weights, 0.7, fixed=fixed)
    up = allocate(family, digits_weights, 0.7, fixed=fixed, perturb={"features.*": 0.2}, mode=mode)
    total = sum(w.numel() for w in digits_weights.values())
    assert removed_count(up, digits_weights) == count_for_ratio(0.7, total)
    assert up["features.0.weight"] == 0.0  # a fixed layer ignores the perturbation
    assert up["features.7.weight"] > base["features.7.weight"] and up["classifier.0.weight"] < base["classifier.0.weight"]
    assert allocate(family, digits_weights, 0.7, fixed=fixed, perturb={"features.*": 0.0}, mode=mode) == base


def test_perturb_key_matching_nothing_is_an_error(digits_weights):
    with pytest.raises(ValueError, match="'feature.*' matches no prunable parameter"):
        allocate("uniform", digits_weights, 0.5, perturb={"feature.*": 0.1})


def test_erk_against_a_hand_computation():
    # raw scores sum(shape)/prod(shape): conv 12/72 = 1/6, fc1 20/64, fc2 6/8. Keep 72 of 144.
    # eps = 72 / (12 + 20 + 6) gives fc2 density 1.42 > 1: fc2 goes dense (8 kept), then
    # eps = (72 - 8) / (12 + 20) = 2: conv density 1/3, fc1 density 5/8.
    w = weights_of(Tiny())
    ratios = allocate("erk", w, 0.5)
    assert ratios == {"conv.weight": pytest.approx(2 / 3), "fc1.weight": pytest.approx(3 / 8), "fc2.weight": 0.0}
    assert removed_count(ratios, w) == 72
    # Target 0.2 (29 removed, 115 kept): fc2 caps first (eps = 115/38), then fc1 (eps = 107/32 gives
    # it density 1.04); the conv takes all 29: eps = (115 - 72) / 12, density 43/72.
    ratios = allocate("erk", w, 0.2)
    assert ratios == {"conv.weight": pytest.approx(29 / 72), "fc1.weight": 0.0, "fc2.weight": 0.0}


def test_erk_ignores_values():
    meta = {n: torch.empty(s, device="meta") for n, s in {"a": (8, 4, 3, 3), "b": (10, 64)}.items()}
    real = {n: torch.randn(*w.shape) for n, w in meta.items()}
    assert allocate("erk", meta, 0.6) == allocate("erk", real, 0.6)


def brute_force_global(scores: dict[str, torch.Tensor], k: int) -> dict[str, int]:
    """The k lowest of all scores by a full sort (scores have no ties)."""
    everything = sorted((float(v), n) for n, s in scores.items() for v in s.reshape(-1))
    counts = dict.fromkeys(scores, 0)
    for _, n in everything[:k]:
        counts[n] += 1
    return counts


def brute_force_lamp(w: torch.Tensor) -> torch.Tensor:
    flat = w.detach().double().reshape(-1)
    sq = flat**2
    return torch.stack([sq[u] / sq[flat.abs() >= flat[u].abs()].sum() for u in range(len(flat))]).reshape(w.shape)


@pytest.mark.parametrize("family", ["global_magnitude", "lamp"])
def test_weight_families_against_brute_force(family):
    torch.manual_seed(1)
    model = Tiny()
    w = weights_of(model)
    score = (lambda t: t.detach().double().abs()) if family == "global_magnitude" else brute_force_lamp
    scores = {n: score(t) for n, t in w.items()}
    if family == "lamp":
        for n, t in w.items():
            assert torch.allclose(lamp_scores(t), scores[n], rtol=1e-12, atol=0)
    for target in (0.3, 0.75, 0.9):
        k = count_for_ratio(target, 144)
        ratios = allocate(family, w, target)
        expected = brute_force_global(scores, k)
        assert {n: count_for_ratio(r, w[n].numel()) for n, r in ratios.items()} == expected
        # per-layer irregular with these ratios removes exactly the globally lowest-scoring weights
        threshold = sorted(float(v) for s in scores.values() for v in s.reshape(-1))[k - 1]
        pruned = Tiny()
        pruned.load_state_dict(model.state_dict())
        pruners.prepare(pruned, ratios, "irregular")
        for n, m in pruners.ratio_config.prunable_modules(pruned).items():
            assert torch.equal(m.weight != 0, scores[n] > threshold)


def test_lamp_largest_weight_of_a_layer_survives_below_full_sparsity():
    torch.manual_seed(2)
    w = weights_of(Tiny())
    ratios = allocate("lamp", w, 140 / 144)
    assert all(count_for_ratio(r, w[n].numel()) < w[n].numel() for n, r in ratios.items())


def test_weight_families_refuse_meta_weights():
    meta = {"a": torch.empty(4, 4, device="meta")}
    with pytest.raises(ValueError, match="needs? .*dense weights|ranks weight values"):
        allocate("lamp", meta, 0.5)


def test_fixed_layers_keep_their_ratio_and_others_absorb():
    w = weights_of(Tiny())
    ratios = allocate("uniform", w, 0.5, fixed={"conv.weight": 0.25})
    assert ratios["conv.weight"] == 0.25  # 18 removed; 54 more among fc1 + fc2 (72 weights)
    assert removed_count(ratios, w) == 72 and ratios["fc1.weight"] == pytest.approx(48 / 64) and ratios["fc2.weight"] == 0.75


def test_unreachable_targets_are_clipped(caplog):
    w = weights_of(Tiny())
    with caplog.at_level(logging.WARNING, logger="pruners.allocation"):
        high = allocate("erk", w, 0.9, fixed={"conv.weight": 0.0})  # 72 weights kept dense: at most 0.5
    assert high == {"conv.weight": 0.0, "fc1.weight": 1.0, "fc2.weight": 1.0}
    assert "out of reach" in caplog.text
    low = allocate("uniform", w, 0.1, fixed={"conv.weight": 1.0})  # 72 removed already: above 0.1
    assert low == {"conv.weight": 1.0, "fc1.weight": 0.0, "fc2.weight": 0.0}


def test_mul_perturbation_keeps_dense_layers_dense():
    w = weights_of(Tiny())
    ratios = allocate("erk", w, 0.5, perturb={"fc1.weight": 0.5}, mode="mul")
    assert ratios["fc2.weight"] == 0.0 and removed_count(ratios, w) == 72
    assert ratios["fc1.weight"] > 3 / 8


def _table(curves: dict, dense: float = 0.9) -> SensitivityTable:
    return SensitivityTable(dense, {k: tuple(v) for k, v in curves.items()})


def test_sensitivity_rule_by_hand():
    # Equal layers; A: drop 0 at 0.5, 0.2 at 0.9; B: 0.1 at 0.5, 0.4 at 0.9. Target 0.6 -> sum of ratios 1.2.
    # With tolerance t in [0.1, 0.2]: r_A = 0.5 + 2t, r_B = 0.5 + (t - 0.1) * 4/3 -> t = 0.1: r_A 0.7, r_B 0.5.
    w = {"a": torch.empty(1000, 1, device="meta"), "b": torch.empty(1000, 1, device="meta")}
    table = _table({"a": [(0.5, 0.0), (0.9, 0.2)], "b": [(0.5, 0.1), (0.9, 0.4)]})
    assert allocate("sensitivity", w, 0.6, table=table) == {"a": 0.7, "b": 0.5}
    # Tolerance 0 gives A its whole flat stretch first: at target 0.25 B gets nothing.
    assert allocate("sensitivity", w, 0.25, table=table) == {"a": 0.5, "b": 0.0}
    # A drop that falls again (noise) is made monotone: the running max is used.
    bumpy = _table({"a": [(0.3, 0.2), (0.6, 0.1)], "b": [(0.3, 0.0), (0.6, 0.0), (0.9, 0.0)]})
    assert allocate("sensitivity", w, 0.45, table=bumpy) == {"a": 0.0, "b": 0.9}


def test_sensitivity_needs_every_free_layer(tmp_path):
    w = {"a": torch.empty(10, 1, device="meta"), "b": torch.empty(10, 1, device="meta")}
    with pytest.raises(ValueError, match="no rows for b"):
        allocate("sensitivity", w, 0.5, table=_table({"a": [(0.5, 0.1)]}))
    assert allocate("sensitivity", w, 0.25, fixed={"b": 0.0}, table=_table({"a": [(0.5, 0.1)]})) == {"a": 0.5, "b": 0.0}


def test_sensitivity_table_reads_and_round_trips(tmp_path):
    path = tmp_path / "sensitivity.csv"
    path.write_text(
        "layer,ratio,accuracy,accuracy_drop,dense_accuracy\n"
        "module.a,0.9,0.5,0.4,0.9\na,0.5,0.85,0.05,0.9\n"
    )  # fmt: skip
    table = SensitivityTable.read(path)
    assert table.dense_accuracy == 0.9 and table.curves == {"a": ((0.5, 0.05), (0.9, 0.4))}
    assert SensitivityTable.from_dict(table.to_dict()) == table
    (tmp_path / "bad.csv").write_text("layer,ratio\na,0.5\n")
    with pytest.raises(ValueError, match="lacks column"):
        SensitivityTable.read(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="cannot read"):
        SensitivityTable.read(tmp_path / "missing.csv")


def test_resolve_allocation_on_a_model_and_refused_methods():
    torch.manual_seed(3)
    model = Tiny()
    spec = {"family": "lamp", "target": 0.5, "perturb": {"fc*": 0.05}}
    ratios = resolve_allocation(model, "irre_prune", {"conv*": 0.25}, spec)
    assert ratios["conv.weight"] == 0.25 and removed_count(ratios, weights_of(model)) == 72
    assert resolve_allocation(model, "filter", {}, {"family": "uniform", "target": 0.5}) == allocate("uniform", weights_of(model), 0.5)
    for method in ("nm", "pattern"):
        with pytest.raises(ValueError, match=f"method {method!r} has no free per-layer ratio"):
            resolve_allocation(model, method, {}, spec)
