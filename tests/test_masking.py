"""Masks as parametrizations: prepare -> step -> squash, optimizers, checkpoints, regrow."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import pruners
from pruners.weight_mask import entries
from pruners.masking import (
    PruneReport,
    WeightMask,
    is_masked,
    load_masked_state_dict,
    masked_parameters,
    prepare,
    scale_target,
    squash,
    step,
)


class Net(nn.Module):
    """VGG-style names: block0 = [conv, bn, relu, conv, bn, relu], then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.block0 = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.block0(x)).flatten(1))


TARGETS = {"block0.0.weight": 0.5, "module.block0.3.weight": 0.75, "classifier.weight": 0.25}


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def _effective(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: getattr(model.get_submodule(n.rsplit(".", 1)[0]), "weight").detach().clone() for n in masked_parameters(model)}


def test_prepare_attaches_masks_with_exact_counts():
    model = _net()
    report = prepare(model, TARGETS, "irregular")
    assert isinstance(report, PruneReport) and report.method == "irregular" and report.skipped == {}
    assert report.pruned == {"block0.0.weight": 0.5, "block0.3.weight": 0.75, "classifier.weight": 0.25}
    masks = masked_parameters(model)
    assert list(masks) == ["block0.0.weight", "block0.3.weight", "classifier.weight"]
    assert is_masked(model)
    for name, wm in masks.items():
        assert isinstance(wm, WeightMask) and wm.method == "irregular" and wm.target == report.pruned[name]
        removed = int((~wm.mask).sum())
        assert removed == round(report.pruned[name] * wm.mask.numel())
        w = model.get_submodule(name.rsplit(".", 1)[0]).weight
        assert torch.equal(w == 0, ~wm.mask)
    # mask and enforced are persistent buffers in the state dict
    keys = set(model.state_dict())
    assert "block0.0.parametrizations.weight.original" in keys
    assert "block0.0.parametrizations.weight.0.mask" in keys
    assert "block0.0.parametrizations.weight.0.enforced" in keys
    assert not is_masked(_net())


def test_prepare_matches_compute_mask():
    model, ref = _net(), _net()
    prepare(model, {"block0.3.weight": 0.4}, "filter")
    expected = pruners.compute_mask("filter", ref.block0[3].weight, 0.4)
    assert torch.equal(masked_parameters(model)["block0.3.weight"].mask, expected)


def test_prepare_errors():
    with pytest.raises(ValueError, match="closest"):
        prepare(_net(), {"block0.9.weight": 0.5}, "irregular")
    with pytest.raises(ValueError, match="unknown prune method"):
        prepare(_net(), {"block0.0.weight": 0.5}, "irregullar")
    model = _net()
    prepare(model, {"block0.0.weight": 0.5}, "irregular")
    with pytest.raises(ValueError, match="already masked"):
        prepare(model, {"block0.0.weight": 0.5}, "irregular")


def test_skipped_layers_get_no_mask():
    model = _net()  # block0.0 has 3 input channels: not a multiple of 4
    report = prepare(model, {"block0.0.weight": "m4n2", "block0.3.weight": "m4n2"}, "nm")
    assert list(report.pruned) == ["block0.3.weight"]
    assert "block0.0.weight" in report.skipped and "multiple of 4" in report.skipped["block0.0.weight"]
    assert not parametrize.is_parametrized(model.block0[0])
    kept = masked_parameters(model)["block0.3.weight"].mask.permute(0, 2, 3, 1).reshape(-1, 4).sum(1)
    assert torch.all(kept == 2)


def test_scale_target():
    assert scale_target(0.8, 0.5) == pytest.approx(0.4)
    assert scale_target(0.8, 1.0) == 0.8
    assert scale_target("m4n2", 1.0) == "m4n2"
    assert scale_target("m4n2", 0.99) == 0.0  # N:M is not graded: dense until the end
    with pytest.raises(ValueError):
        scale_target(0.5, 1.5)


def test_gradual_nm_is_dense_then_nm():
    model = _net()
    prepare(model, {"block0.3.weight": "m4n2"}, "nm", fraction=0.5)
    assert masked_parameters(model)["block0.3.weight"].mask.all()
    step(model, fraction=1.0)
    assert int((~masked_parameters(model)["block0.3.weight"].mask).sum()) == 8 * 8 * 9 // 2


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 5) -> None:
    x = torch.randn(4, 3, 6, 6)
    for _ in range(steps):
        opt.zero_grad()
        # pushes every weight: the gradient of sum(w) is nonzero everywhere on ``original``
        loss = model(x).pow(2).mean() - sum(p.sum() for p in model.parameters())
        loss.backward()
        opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "adamw"],
)
def test_masked_weights_stay_exactly_zero_through_optimizers(make_opt):
    model = _net()
    prepare(model, TARGETS, "irregular")
    masks = {n: wm.mask.clone() for n, wm in masked_parameters(model).items()}
    before = _effective(model)
    _train(model, make_opt(model.parameters()), steps=6)
    after = _effective(model)
    for name, mask in masks.items():
        assert torch.all(after[name][~mask] == 0)
        assert torch.all(after[name][mask] != before[name][mask])  # the kept weights did train
        assert torch.equal(masked_parameters(model)[name].mask, mask)


def test_step_resets_momentum_drift_so_nothing_revives():
    model = _net()
    prepare(model, {"block0.3.weight": 0.3}, "irregular")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt, steps=2)
    step(model, fraction=0.0)  # dense mask: the pruned weights must come back as 0, not stale
    orig = model.block0[3].parametrizations.weight.original
    n_zero = int((orig == 0).sum())
    assert n_zero == round(0.3 * orig.numel())
    assert masked_parameters(model)["block0.3.weight"].mask.all()


def test_regrow_phase_starts_pruned_weights_at_zero_then_they_grow():
    model = _net()
    prepare(model, TARGETS, "irregular", enforce=False)
    wm = masked_parameters(model)["block0.3.weight"]
    assert not bool(wm.enforced)
    pruned = ~wm.mask.clone()
    assert torch.all(model.block0[3].weight[pruned] == 0)  # hard-pruned: start from 0
    _train(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), steps=1)
    assert torch.all(model.block0[3].weight[pruned] != 0)  # not enforced: they regrow
    step(model, fraction=1.0, enforce=True)  # fix: recompute from the regrown weights, enforce
    assert bool(wm.enforced)
    assert int((model.block0[3].weight == 0).sum()) == round(0.75 * wm.mask.numel())


def test_model_options_computed_once_per_step(monkeypatch):
    calls: list[int] = []
    method = pruners.get_method("pattern")
    real = method.model_options
    assert real is not None

    def counting(weights):
        calls.append(len(weights))
        return real(weights)

    patched = pruners.Method(method.name, method.mask_fn, method.skip_fn, method.aliases, method.doc, counting)
    monkeypatch.setitem(pruners.METHODS, "pattern", patched)
    model = _net()
    prepare(model, {"block0.0.weight": 0.5, "block0.3.weight": 0.5}, "pattern")
    step(model)
    assert calls == [2, 2]


def test_squash_leaves_plain_parameters_with_zeros():
    model = _net()
    prepare(model, TARGETS, "irregular")
    x = torch.randn(2, 3, 6, 6)
    model.eval()
    out = model(x)
    zeros = {n: (w == 0) for n, w in _effective(model).items()}
    assert squash(model) is model
    assert not is_masked(model)
    for name, z in zeros.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        assert not parametrize.is_parametrized(module)
        assert type(module.weight) is nn.Parameter
        assert torch.equal(module.weight == 0, z)
    assert "block0.0.weight" in model.state_dict()
    assert torch.allclose(model(x), out)


@pytest.mark.parametrize("trained", [False, True])
def test_squash_matches_torchs_remove_parametrizations_and_keeps_each_parameter(trained):
    """squash removes a module's masks at once; the result is torch's, tensor for tensor, and
    every Parameter an optimizer holds is still the model's (also once the originals are off their
    masks, when the effective values are products, not the originals themselves)."""
    torch.manual_seed(0)
    ours, theirs = _net(), _net()
    theirs.load_state_dict(ours.state_dict())
    for model in (ours, theirs):
        prepare(model, TARGETS, "filter")  # with the BatchNorms after the convs: weight and bias masked
    if trained:
        x = torch.randn(2, 3, 6, 6)
        for model in (ours, theirs):
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            model(x).sum().backward()
            opt.step()
            with torch.no_grad():  # originals off their masks (as an optimizer with noise would move them)
                for _, module, tensor_name, _ in entries(model):
                    module.parametrizations[tensor_name].original.add_(0.5)
    held = {id(p) for p in ours.parameters()}
    for _, module, tensor_name, _ in list(entries(theirs)):
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    squash(ours)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), name
    assert {id(p) for p in ours.parameters()} == held
    assert all(type(m).__name__ == type(t).__name__ for m, t in zip(ours.modules(), theirs.modules()))


def test_checkpoint_round_trip(tmp_path: Path):
    model = _net()
    prepare(model, TARGETS, "stripe")
    _train(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    step(model, enforce=False)  # a non-default enforced flag must survive too
    masks = masked_parameters(model)
    masks["classifier.weight"].enforced.fill_(True)
    path = tmp_path / "ckpt.pt"
    # as a DDP worker would save it: keys prefixed with module.
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    fresh = _net(seed=1)
    load_masked_state_dict(fresh, torch.load(path, weights_only=True))
    loaded = masked_parameters(fresh)
    assert list(loaded) == list(masks)
    # The targets carry stripe masks; the biases and BatchNorms after them carry derived ones.
    assert {n for n, wm in masks.items() if wm.method == "stripe"} == {"block0.0.weight", "block0.3.weight", "classifier.weight"}
    for name, wm in masks.items():
        assert torch.equal(loaded[name].mask, wm.mask)
        assert bool(loaded[name].enforced) == bool(wm.enforced)
        assert (loaded[name].method, loaded[name].target) == (wm.method, wm.target)
        assert (loaded[name].follows, loaded[name].reads) == (wm.follows, wm.reads)
    x = torch.randn(2, 3, 6, 6)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    step(fresh)  # bookkeeping came back: the reloaded model can keep stepping
    step(model)
    assert torch.equal(model(x), fresh(x))


def test_load_masked_state_dict_strict():
    model = _net()
    prepare(model, TARGETS, "irregular")
    sd = model.state_dict()
    sd["bogus"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="bogus"):
        load_masked_state_dict(_net(), sd)
    result = load_masked_state_dict(_net(), sd, strict=False)
    assert result.unexpected_keys == ["bogus"]
    # a plain (unmasked) checkpoint loads into a fresh model too
    plain = _net()
    load_masked_state_dict(plain, _net(seed=3).state_dict())
    assert not is_masked(plain)


def test_load_masked_state_dict_shape_mismatch():
    model = _net()
    prepare(model, {"classifier.weight": 0.5}, "irregular")
    sd = model.state_dict()
    other = nn.Module()
    other.classifier = nn.Linear(8, 5)
    with pytest.raises(ValueError, match="shape"):
        load_masked_state_dict(other, sd)


def test_ddp_wrapped_model_steps_and_saves(tmp_path: Path):
    """Masks registered before the DDP wrap keep working through it (gloo, world size 1)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = _net()
        with pytest.raises(ValueError, match="before wrapping"):
            prepare(nn.parallel.DistributedDataParallel(_net()), TARGETS, "irregular")
        prepare(model, TARGETS, "irregular", fraction=0.5)
        ddp = nn.parallel.DistributedDataParallel(model)
        assert list(masked_parameters(ddp)) == ["block0.0.weight", "block0.3.weight", "classifier.weight"]
        _train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4), steps=2)
        step(ddp, fraction=1.0)
        _train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4), steps=2)
        wm = masked_parameters(ddp)["block0.3.weight"]
        assert torch.all(model.block0[3].weight[~wm.mask] == 0)
        assert int((~wm.mask).sum()) == round(0.75 * wm.mask.numel())
        fresh = _net(seed=2)
        load_masked_state_dict(fresh, ddp.state_dict())
        x = torch.randn(2, 3, 6, 6)
        model.eval(), fresh.eval()
        assert torch.equal(model(x), fresh(x))
    finally:
        dist.destroy_process_group()


class OneByOne(nn.Module):
    """conv 3x3 -> BN -> ReLU -> conv 1x1 (bias) -> BN -> ReLU -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(torch.relu(self.b0(self.c0(x))))))
        return self.fc(y.mean((2, 3)))


def _randomized(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.rand(m.num_features, generator=g) + 0.5)  # beta > 0: ReLU keeps it
    return model


@pytest.mark.parametrize("method,targets", [("filter", {"c0.weight": 0.5, "c1.weight": 0.5}), ("stripe", {"c1.weight": 0.5})])
def test_a_dead_filter_takes_its_bias_and_batchnorm_along(method, targets):
    """filter (and stripe on a 1x1 conv, where a stripe is a filter): a pruned channel outputs exactly 0."""
    torch.manual_seed(0)
    model = _randomized(OneByOne())
    report = prepare(model, targets, method)
    masks = masked_parameters(model)
    derived = {n for n, wm in masks.items() if not wm.method}
    conv = "c1" if method == "stripe" else "c0"
    assert {f"{conv}.bias", f"b{conv[1]}.weight", f"b{conv[1]}.bias"} <= derived and report.derived == len(derived)
    dead = ~masks[f"{conv}.weight"].mask.flatten(1).any(1)
    assert int(dead.sum()) == (3 if conv == "c1" else 4)
    for name in (f"{conv}.bias", f"b{conv[1]}.weight", f"b{conv[1]}.bias"):
        assert torch.equal(masks[name].mask, ~dead)
    bn = getattr(model, f"b{conv[1]}")
    out = {}
    bn.register_forward_hook(lambda m, a, o: out.__setitem__("y", o))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        loss = model(torch.randn(4, 3, 6, 6)).square().mean()
        assert out["y"][:, dead].abs().max() == 0.0  # exactly 0, in both modes, after BatchNorm
        opt.zero_grad(), loss.backward(), opt.step()


def test_a_checkpoint_without_derived_masks_still_loads():
    """Masks saved before biases and BatchNorms were masked: the weight masks come back, alone."""
    model = _net()
    prepare(model, TARGETS, "filter")
    derived = {n for n, wm in masked_parameters(model).items() if not wm.method}
    old = {}
    for key, value in model.state_dict().items():
        mod, sep, rest = key.partition(".parametrizations.")
        tensor = rest.split(".")[0]
        if sep and f"{mod}.{tensor}" in derived:
            if rest == f"{tensor}.original":
                old[f"{mod}.{tensor}"] = value  # a plain tensor, as saved then
            continue
        old[key] = value
    fresh = _net(seed=1)
    load_masked_state_dict(fresh, old)
    loaded = masked_parameters(fresh)
    assert set(loaded) == {"block0.0.weight", "block0.3.weight", "classifier.weight"}
    assert all(wm.method == "filter" and not wm.follows and not wm.reads for wm in loaded.values())
    step(fresh)
    assert all(torch.equal(loaded[n].mask, masked_parameters(model)[n].mask) for n in loaded)
    bare = _net(seed=2)  # no bookkeeping at all (no extra state): the masks stay as loaded
    load_masked_state_dict(bare, {k: v for k, v in old.items() if not k.endswith("_extra_state")})
    step(bare)
    assert all(torch.equal(masked_parameters(bare)[n].mask, loaded[n].mask) for n in loaded)
