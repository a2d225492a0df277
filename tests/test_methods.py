"""The six pruning methods: exact counts, tie rules, skips and bad input (pruners.compute_mask)."""
from __future__ import annotations

import math

import pytest
import torch

import pruners
from pruners.patterns import PATTERN_FLOOR, candidate_patterns, select_library
from pruners.selection import count_for_ratio, keep_largest, remove_lowest

TARGETS = {"irregular": 0.5, "filter": 0.5, "stripe": 0.5, "nm": "m4n2", "pattern": 0.7, "channel": 0.5}
ALIASES = {
    "irregular": "irre_prune",
    "filter": "filter_prune",
    "stripe": "stripe_prune",
    "nm": "mn_prune",
    "pattern": "pat_prune",
}
RATIO_METHODS = ["irregular", "filter", "stripe", "pattern", "channel"]


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def n_removed(mask: torch.Tensor) -> int:
    return int((~mask).sum())


# ----------------------------------------------------------------------------- every method
def test_registry_names_and_aliases():
    assert sorted(pruners.list_methods()) == sorted(TARGETS)
    for name, alias in ALIASES.items():
        assert pruners.get_method(alias).name == name


@pytest.mark.parametrize("method", pruners.list_methods())
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (12, 16)])
def test_contract(method, shape):
    weight = randn(*shape)
    original = weight.clone()
    mask = pruners.compute_mask(method, weight, TARGETS[method])
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert torch.equal(weight, original)  # never modified
    assert torch.equal(mask, pruners.compute_mask(method, weight, TARGETS[method]))  # deterministic
    if method in ALIASES:  # the reference project's names; channel is beyond it
        assert torch.equal(mask, pruners.compute_mask(ALIASES[method], weight, TARGETS[method]))
    assert torch.equal(mask, pruners.compute_mask(method.upper(), weight, TARGETS[method]))


@pytest.mark.parametrize("method", RATIO_METHODS)
@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (6, 10)])
def test_ratio_zero_keeps_all_and_one_removes_all(method, shape):
    weight = randn(*shape)
    assert pruners.compute_mask(method, weight, 0.0).all()
    if method == "pattern" and len(shape) == 2:
        assert pruners.compute_mask(method, weight, 1.0).all()  # skipped: left dense
    else:
        assert not pruners.compute_mask(method, weight, 1.0).any()


def test_nm_zero_is_dense_and_other_ratios_are_refused():
    weight = randn(8, 8, 3, 3)
    assert pruners.compute_mask("nm", weight, 0.0).all()
    with pytest.raises(ValueError, match="method 'nm' takes an 'mXnY' target"):
        pruners.compute_mask("nm", weight, 0.5)
    with pytest.raises(ValueError, match="method 'nm' takes an 'mXnY' target"):
        pruners.skip_reason("nm", weight.shape, 1.0)


# ----------------------------------------------------------------------------- selection
def test_count_rounds_half_up():
    assert count_for_ratio(0.5, 5) == 3  # banker's round(2.5) would give 2
    assert count_for_ratio(0.5, 1) == 1
    assert count_for_ratio(0.3, 10) == 3
    assert count_for_ratio(0.0, 7) == 0 and count_for_ratio(1.0, 7) == 7
    assert count_for_ratio(0.5, 0) == 0


def test_remove_lowest_batched_ties_and_nan():
    scores = torch.tensor([[3.0, 1.0, 1.0, 1.0, 2.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    keep = remove_lowest(scores, 0.4)  # 2 per row; ties: lower index removed first
    assert keep.tolist() == [[True, False, False, True, True], [True, True, True, False, False]]
    with_nan = torch.tensor([1.0, float("nan"), 2.0, 3.0])
    assert remove_lowest(with_nan, 0.25).tolist() == [True, False, True, True]
    assert keep_largest(torch.ones(3, 4), 2).tolist() == [[True, True, False, False]] * 3
    wide = torch.ones(2, 32)  # wider than the pairwise path: kthvalue fallback, same rule
    assert keep_largest(wide, 5).sum(1).tolist() == [5, 5] and keep_largest(wide, 5)[:, :5].all()


# ----------------------------------------------------------------------------- irregular
@pytest.mark.parametrize("shape", [(8, 5, 3, 3), (7, 13)])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.77])
def test_irregular_exact_count_smallest_removed(shape, ratio):
    weight = randn(*shape)
    mask = pruners.compute_mask("irregular", weight, ratio)
    assert n_removed(mask) == math.floor(ratio * weight.numel() + 0.5)
    assert weight.abs()[~mask].max() <= weight.abs()[mask].min()


def test_irregular_ties_remove_lower_index_first():
    mask = pruners.compute_mask("irregular", torch.ones(4, 4), 0.5)
    assert mask.reshape(-1).tolist() == [False] * 8 + [True] * 8


# ----------------------------------------------------------------------------- filter
@pytest.mark.parametrize("shape", [(10, 4, 3, 3), (9, 6)])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9])
def test_filter_removes_exact_lowest_l1_filters(shape, ratio):
    weight = randn(*shape, seed=1)
    mask = pruners.compute_mask("filter", weight, ratio)
    rows = mask.reshape(shape[0], -1)
    assert (rows.all(1) | ~rows.any(1)).all()  # whole filters only
    k = math.floor(ratio * shape[0] + 0.5)
    l1 = weight.abs().reshape(shape[0], -1).sum(1)
    expected = set(torch.argsort(l1, stable=True)[:k].tolist())
    assert set(torch.nonzero(~rows.any(1)).flatten().tolist()) == expected


def test_filter_ties_remove_first_filters():
    mask = pruners.compute_mask("filter", torch.ones(6, 2, 3, 3), 0.5)
    assert mask.reshape(6, -1).any(1).tolist() == [False] * 3 + [True] * 3


# ----------------------------------------------------------------------------- stripe
@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.85])
def test_stripe_constant_across_inputs_exact_count(ratio):
    weight = randn(6, 5, 3, 3, seed=2)
    mask = pruners.compute_mask("stripe", weight, ratio)
    assert (mask == mask[:, :1]).all()  # constant across input channels
    stripes = mask[:, 0]  # (out, kh, kw)
    k = math.floor(ratio * stripes.numel() + 0.5)
    assert n_removed(stripes) == k
    l1 = weight.abs().sum(1).reshape(-1)
    assert set(torch.nonzero(~stripes.reshape(-1)).flatten().tolist()) == set(
        torch.argsort(l1, stable=True)[:k].tolist()
    )


def test_stripe_on_1x1_and_linear_equals_filter():
    conv1x1, linear = randn(12, 7, 1, 1), randn(12, 7)
    for w in (conv1x1, linear):
        assert pruners.skip_reason("stripe", w.shape, 0.5) is None
        assert torch.equal(pruners.compute_mask("stripe", w, 0.5), pruners.compute_mask("filter", w, 0.5))


def test_stripe_ties_remove_first_stripes():
    mask = pruners.compute_mask("stripe", torch.ones(2, 3, 3, 3), 0.5)
    assert mask[:, 0].reshape(-1).tolist() == [False] * 9 + [True] * 9


# ----------------------------------------------------------------------------- N:M
def nm_reference(weight: torch.Tensor, x: int, y: int) -> torch.Tensor:
    """Brute force: per group, sort by (-|w|, index) and keep the first y."""
    moved = weight.permute(0, 2, 3, 1) if weight.dim() == 4 else weight
    groups = moved.abs().reshape(-1, x).tolist()
    keep = [[i in sorted(range(x), key=lambda j: (-g[j], j))[:y] for i in range(x)] for g in groups]
    keep = torch.tensor(keep).reshape(moved.shape)
    return keep.permute(0, 3, 1, 2) if weight.dim() == 4 else keep


@pytest.mark.parametrize("spec,x,y", [("m4n2", 4, 2), ("m8n3", 8, 3), ("m4n1", 4, 1), ("m32n8", 32, 8)])
@pytest.mark.parametrize("shape", [(3, 32, 3, 3), (5, 64)])
def test_nm_matches_brute_force(spec, x, y, shape):
    # Small integers: many ties, so the lower-index-kept rule is exercised.
    weight = torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(3)).float()
    mask = pruners.compute_mask("nm", weight, spec)
    assert torch.equal(mask, nm_reference(weight, x, y))
    moved = mask.permute(0, 2, 3, 1) if mask.dim() == 4 else mask
    assert (moved.reshape(-1, x).sum(1) == y).all()


def test_nm_random_weights_keep_largest():
    weight = randn(4, 16, 3, 3, seed=4)
    assert torch.equal(pruners.compute_mask("mn_prune", weight, "m4n2"), nm_reference(weight, 4, 2))


def test_nm_ties_keep_lower_index():
    mask = pruners.compute_mask("nm", torch.ones(2, 8), "m4n2")
    assert mask.tolist() == [[True, True, False, False] * 2] * 2


@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (4, 10)])
def test_nm_skips_indivisible_input_dim(shape):
    reason = pruners.skip_reason("nm", shape, "m4n2")
    assert reason == f"input dimension {shape[1]} is not a multiple of 4 (m4n2)"
    assert pruners.compute_mask("nm", randn(*shape), "m4n2").all()


# ----------------------------------------------------------------------------- pattern
def test_candidate_patterns():
    cands = candidate_patterns()
    assert cands.shape == (56, 3, 3) and cands.dtype == torch.bool
    flat = cands.reshape(56, 9)
    assert (flat.sum(1) == 4).all() and flat[:, 4].all()
    assert len({tuple(r.tolist()) for r in flat}) == 56


def pattern_reference(weight: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
    """Brute force best library pattern per kernel (largest kept L2, ties -> lower index)."""
    lib = library.reshape(-1, 9).double()
    out = []
    for kernel in weight.reshape(-1, 9).double():
        energies = [(float((kernel.square() * p).sum()), -i) for i, p in enumerate(lib)]
        out.append(lib[-max(energies)[1]].bool())
    return torch.stack(out).reshape(weight.shape)


def test_pattern_pattern_step_matches_brute_force_and_floor():
    weight = randn(6, 5, 3, 3, seed=5)
    library = select_library([weight])
    expected = pattern_reference(weight, library)
    for t in (0.1, 0.3, PATTERN_FLOOR):  # 5/9 is pattern pruning's floor
        mask = pruners.compute_mask("pattern", weight, t, library=library)
        assert torch.equal(mask, expected)
        assert (mask.reshape(-1, 9).sum(1) == 4).all()
    assert torch.equal(pruners.compute_mask("pattern", weight, 0.3), expected)  # default library


@pytest.mark.parametrize("ratio", [0.6, 0.75, 0.9, 0.99])
def test_pattern_connectivity_exact(ratio):
    weight = randn(10, 6, 3, 3, seed=6)
    library = select_library([weight])
    mask = pruners.compute_mask("pattern", weight, ratio, library=library)
    kernels = mask.reshape(-1, 9)
    n = kernels.shape[0]
    k = math.floor((ratio - 5 / 9) / (4 / 9) * n + 0.5)
    dead = ~kernels.any(1)
    assert int(dead.sum()) == k
    assert n_removed(mask) == 5 * n + 4 * k  # sparsity 5/9 + 4/9 * k/n
    patterned = pattern_reference(weight, library).reshape(-1, 9)
    assert torch.equal(kernels[~dead], patterned[~dead])
    energy = (weight.reshape(-1, 9).square() * patterned).sum(1)  # L2 after pattern masking
    assert energy[dead].max() <= energy[~dead].min()
    lib_rows = {tuple(r.tolist()) for r in library.reshape(-1, 9)}
    survivors = {tuple(r.tolist()) for r in kernels[~dead]}
    assert survivors <= lib_rows and len(survivors) <= 8
    assert all(r[4] for r in survivors)


def test_pattern_library_selection_counts_and_ties():
    cands = candidate_patterns().reshape(56, 9)
    # 3 kernels best fit candidate 10, 2 fit candidate 3, 1 fits candidate 40.
    kernels = torch.cat([cands[[10] * 3], cands[[3] * 2], cands[[40]]]).float() * 2 + 0.1
    weight = kernels.reshape(6, 1, 3, 3)
    lib = select_library([weight], size=3)
    assert torch.equal(lib, candidate_patterns()[[3, 10, 40]])  # ascending candidate order
    # Counts tied (all zero beyond these): lower candidate indices fill the library.
    lib8 = select_library([weight])
    assert torch.equal(lib8, candidate_patterns()[[0, 1, 2, 3, 4, 5, 10, 40]])
    # An all-equal kernel's best fit is candidate 0 (ties -> lower candidate index).
    assert torch.equal(select_library([torch.ones(2, 2, 3, 3)], size=1), candidate_patterns()[:1])
    with pytest.raises(ValueError):
        select_library([randn(4, 4)])
    with pytest.raises(ValueError):
        select_library([weight], size=0)


def test_pattern_library_spans_layers_via_model_options():
    method = pruners.get_method("pattern")
    convs = [randn(8, 4, 3, 3, seed=7), randn(8, 8, 3, 3, seed=8)]
    options = method.model_options(convs + [randn(10, 8), randn(4, 4, 1, 1)])
    assert torch.equal(options["library"], select_library(convs))
    assert method.model_options([randn(10, 8)]) == {}
    for w in convs:
        mask = pruners.compute_mask("pattern", w, 0.6, **options)
        rows = {tuple(r.tolist()) for r in mask.reshape(-1, 9) if r.any()}
        assert rows <= {tuple(r.tolist()) for r in options["library"].reshape(-1, 9)}


def test_pattern_ties_on_all_equal_weight():
    weight = torch.ones(2, 3, 3, 3)
    mask = pruners.compute_mask("pattern", weight, 5 / 9 + 4 / 9 * 0.5)  # half the kernels go
    kernels = mask.reshape(-1, 9)
    assert kernels.any(1).tolist() == [False] * 3 + [True] * 3  # lower index removed first
    assert (kernels[3:] == candidate_patterns()[0].reshape(9)).all()


@pytest.mark.parametrize("shape", [(8, 4, 1, 1), (8, 4, 5, 5), (10, 8)])
def test_pattern_skips_non_3x3(shape):
    reason = pruners.skip_reason("pattern", shape, 0.7)
    assert reason is not None and reason.startswith("pattern pruning needs 3x3 kernels")
    assert pruners.compute_mask("pattern", randn(*shape), 0.7).all()


def test_pattern_rejects_bad_library():
    weight = randn(4, 4, 3, 3)
    with pytest.raises(ValueError, match="library"):
        pruners.compute_mask("pattern", weight, 0.6, library=torch.ones(2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="library"):
        pruners.compute_mask("pattern", weight, 0.6, library=torch.ones(4, 9, dtype=torch.bool))


# ----------------------------------------------------------------------------- bad input
def test_unknown_method_suggests_nearest():
    with pytest.raises(ValueError, match="did you mean 'filter'"):
        pruners.compute_mask("filtr", randn(4, 4), 0.5)


@pytest.mark.parametrize("target", [-0.1, 1.5, "m4n4", "m0n0", "mxn2", "m2n4", float("nan"), True, None])
def test_bad_targets(target):
    with pytest.raises(ValueError):
        pruners.compute_mask("nm" if isinstance(target, str) else "irregular", randn(4, 8), target)


@pytest.mark.parametrize("method", pruners.list_methods())
def test_vectors_refused_and_conv1d_conv3d_weights_pruned_or_skipped(method):
    """A 1-D tensor is no layer's weight; Conv1d (3-D) and Conv3d (5-D) weights are pruned, except
    by pattern (3x3 kernels only), which says why (tests/test_architectures.py: exact masks)."""
    with pytest.raises(ValueError, match="1-D weight"):
        pruners.compute_mask(method, randn(16), TARGETS[method])
    for shape in ((8, 4, 3), (8, 4, 3, 3, 3)):
        reason = pruners.skip_reason(method, shape, TARGETS[method])
        mask = pruners.compute_mask(method, randn(*shape), TARGETS[method])
        assert mask.shape == shape and (reason is not None) == (method == "pattern") == bool(mask.all())


@pytest.mark.parametrize("method", RATIO_METHODS)
def test_ratio_methods_refuse_nm_targets(method):
    with pytest.raises(ValueError, match="M:N targets like 'm4n2' belong to method 'nm'"):
        pruners.compute_mask(method, randn(8, 8, 3, 3), "m4n2")
    with pytest.raises(ValueError, match="belong to method 'nm'"):
        pruners.skip_reason(method, (8, 8), "m4n2")


def test_channel_alone_is_filter_pruning():
    """compute_mask sees one weight, which is then its own channel group: L1 filter pruning."""
    weight = randn(10, 4, 3, 3)
    assert torch.equal(pruners.compute_mask("channel", weight, 0.3), pruners.compute_mask("filter", weight, 0.3))
    assert pruners.get_method("channel").graph is not None and pruners.get_method("channel").kills_channels


def test_unknown_options_refused():
    with pytest.raises(ValueError, match="takes no options"):
        pruners.compute_mask("filter", randn(4, 4), 0.5, library=candidate_patterns()[:8])


def test_half_precision_and_grad_weights():
    weight = randn(8, 8, 3, 3).to(torch.bfloat16).requires_grad_()
    for method in pruners.list_methods():
        mask = pruners.compute_mask(method, weight, TARGETS[method])
        assert mask.dtype == torch.bool and not mask.requires_grad


def test_all_candidates_reachable_by_best_fit():
    # Each candidate, as a kernel, must be its own best fit among all 56.
    for combo in candidate_patterns():
        kernel = combo.float().reshape(1, 1, 3, 3)
        assert torch.equal(select_library([kernel], size=1)[0], combo)
