"""Compaction is exact and physically smaller; the export CLI writes a file plain torch can run."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import pruners
from pruners.compact import BiasMapConv2d, compact, squashed_copy
from pruners.masking import WeightMask
from raysweep import export
from raysweep.speed.export import load_checkpoint
from raysweep.speed.program import load_exported, save_model
from raysweep.speed.semi_structured import is_2to4, semi_structured_check
from raysweep.config import RunConfig
from raysweep.models import create_model

from pruners.testing import trained_like

TOL = 1e-5






def masked(name: str, targets: dict, method: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = trained_like(create_model(name), seed)
    pruners.prepare(model, targets, method)
    return model.eval()


def legacy_masked(name: str, targets: dict, method: str, seed: int = 0) -> nn.Module:
    """Masks as checkpoints saved them before biases and BatchNorms were masked: the weights' own only,
    so a dead filter still passes its bias through BatchNorm as a constant."""
    new = masked(name, targets, method, seed)
    torch.manual_seed(seed)
    model = trained_like(create_model(name), seed)
    for full, wm in pruners.masked_parameters(new).items():
        if wm.method:
            mod_name, _, tensor = full.rpartition(".")
            module = model.get_submodule(mod_name)
            with torch.no_grad():
                getattr(module, tensor).mul_(wm.mask)
            parametrize.register_parametrization(module, tensor, WeightMask(wm.mask, wm.method, wm.target))
    return model.eval()


def max_diff(a: nn.Module, b: nn.Module, shape: tuple[int, ...]) -> float:
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(123))  # not the probe batch
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


CASES = [
    ("digits_cnn", (1, 8, 8), {"features.*": 0.5, "classifier.0.weight": 0.5}, "filter"),
    ("digits_cnn", (1, 8, 8), {"*": 0.8}, "stripe"),
    ("digits_cnn", (1, 8, 8), {"features.*": 0.9}, "pattern"),
    ("digits_cnn", (1, 8, 8), {"*": 0.95}, "irregular"),
    ("cifar_vgg16", (3, 32, 32), {"block*": 0.5}, "filter"),
    ("resnet20", (3, 32, 32), {"*conv*": 0.5, "*downsample*": 0.5, "conv1.weight": 0.5}, "filter"),
    ("mobilenetv2", (3, 32, 32), {"features.*": 0.5}, "filter"),
]


@pytest.mark.parametrize("name,shape,targets,method", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_compact_is_exact_and_smaller(name, shape, targets, method):
    model = masked(name, targets, method)
    small, report = compact(model, torch.randn(1, *shape))
    assert pruners.is_masked(model) and max_diff(model, model, shape) == 0.0  # the input model is untouched
    assert max_diff(small, model, shape) <= TOL and report.max_abs_diff <= TOL
    assert report.channels_removed > 0
    assert report.params_after == sum(p.numel() for p in small.parameters()) < report.params_before
    assert report.channels_removed + sum(report.kept_dead.values()) == report.channels_dead
    assert not pruners.is_masked(small)


def test_filter_masks_make_every_dead_channel_removable_at_any_size():
    """The bias and BatchNorm after a dead filter are masked too: its channel is exactly 0, so it goes
    with no fold, no bias map, and the result is exact at other input sizes as well."""
    model = masked("resnet20", {"*conv*": 0.5, "*downsample*": 0.5, "conv1.weight": 0.5}, "filter")
    small, report = compact(model, torch.randn(1, 3, 32, 32))
    assert report.kept_dead == {} and report.channels_removed == report.channels_dead > 0
    assert report.bias_maps == [] and report.biases_added == []
    for shape in ((3, 32, 32), (3, 40, 40)):
        assert max_diff(small, model, shape) <= TOL


def test_padded_consumers_keep_channels_whose_constant_is_not_zero():
    """Old masks (weights only) with random BN make dead channels non-zero constants; a padded 3x3
    consumer cannot absorb those."""
    model = legacy_masked("digits_cnn", {"features.*": 0.5}, "filter")
    _, report = compact(model, torch.randn(1, 1, 8, 8))
    reasons = set(report.kept_dead)
    assert reasons == {
        "zero padding of features.3 makes a constant channel position-dependent",
        "zero padding of features.7 makes a constant channel position-dependent",
    }
    # features.7's dead channels all go: the flattened Linear absorbs any constant exactly.
    assert next(g for g in report.groups if g["producer"] == "features.7") == {
        "producer": "features.7", "size": 64, "dead": 32, "removed": 32
    }


def test_fold_borders_removes_every_dead_channel_with_bias_maps(tmp_path, capsys):
    model = legacy_masked("digits_cnn", {"features.*": 0.5}, "filter")
    small, report = compact(model, torch.randn(1, 1, 8, 8), fold_borders=True)
    assert report.kept_dead == {} and report.channels_removed == report.channels_dead == 56
    assert report.bias_maps == ["features.3", "features.7"]
    assert isinstance(small.features[3], BiasMapConv2d) and small.features[3].bias_map.shape == (16, 8, 8)
    assert max_diff(small, model, (1, 8, 8)) <= TOL
    ckpt, model = _checkpoint(tmp_path, {"features.*": 0.5}, "filter", legacy=True)
    out = tmp_path / "fb.pt2"
    assert export.main([str(ckpt), "--out", str(out), "--fold-borders", "-q"]) == 0
    assert "per-position bias map" in capsys.readouterr().out
    assert max_diff(load_exported(out), model, (1, 8, 8)) <= TOL


class Folds(nn.Module):
    """conv -> BN -> ReLU -> 1x1 conv without bias -> BN, and a 1x1 conv without bias or BN."""

    def __init__(self) -> None:
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 4, 1, bias=False)

    def forward(self, x):
        return self.c2(torch.relu(self.b1(self.c1(torch.relu(self.b0(self.c0(x)))))))


def test_constants_fold_into_bn_running_mean_or_a_new_bias():
    model = trained_like(Folds())
    with torch.no_grad():
        model.b0.bias.fill_(1.0)  # every dead channel of c0 is a positive constant after ReLU
        model.b1.bias.fill_(1.0)
    pruners.prepare(model, {"c0.weight": 0.5, "c1.weight": 0.5}, "filter")
    for name, wm in pruners.masked_parameters(model).items():  # old masks: the weights' own only
        if not wm.method:
            mod_name, _, tensor = name.rpartition(".")
            parametrize.remove_parametrizations(model.get_submodule(mod_name), tensor, leave_parametrized=False)
    with torch.no_grad():  # removing a mask gives back the hard-pruned original: dense values again
        model.b0.bias.fill_(1.0)
        model.b1.bias.fill_(1.0)
        model.c0.bias.copy_(torch.linspace(-1, 1, 8))
    mean_before = model.b1.running_mean.clone()
    live_c1 = pruners.masked_parameters(model)["c1.weight"].mask.flatten(1).any(1)
    small, report = compact(model, torch.randn(1, 3, 6, 6))
    assert (small.c1.in_channels, small.c1.out_channels, small.c2.in_channels) == (4, 3, 3)
    # c1 has no bias: what the 4 removed channels of c0 gave it moved into b1's running mean.
    assert small.c1.bias is None and not torch.allclose(small.b1.running_mean, mean_before[live_c1])
    assert report.biases_added == ["c2"] and small.c2.bias.shape == (4,)
    assert max_diff(small, model, (3, 6, 6)) <= TOL


def test_filter_pruned_parameter_count_matches_structure_and_accounting():
    """All dead channels removable (negative biases: ReLU gives 0); exact count, tied to accounting."""
    torch.manual_seed(0)
    model = create_model("digits_cnn").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):  # no zero left but pruned weights
                m.bias.copy_(-0.1 - torch.rand(m.bias.shape))
    pruners.prepare(model, {"features.*": 0.5, "classifier.0.weight": 0.5}, "filter")
    small, report = compact(model, torch.randn(1, 1, 8, 8))
    assert report.kept_dead == {} and report.channels_removed == 8 + 16 + 32 + 32
    # conv 1->8, BN 8, conv 8->16, BN 16, conv 16->32, BN 32, Linear 32*2*2->32, Linear 32->10
    expected = (8 * 9 + 8) + 16 + (16 * 8 * 9 + 16) + 32 + (32 * 16 * 9 + 32) + 64 + (32 * 128 + 32) + (10 * 32 + 10)
    assert report.params_after == expected
    after = pruners.sparsity_report(small)
    assert after["params_total"] == after["params_remaining"] == expected  # no zero left inside
    # The masked model's accounting also counts what only reads dead channels: the next layer's
    # columns for them, and their BN weight/bias and conv bias. Exactly that is the difference.
    plain = squashed_copy(model)
    layers = [plain.features[0], plain.features[3], plain.features[7], plain.classifier[0]]
    bns = [plain.features[1], plain.features[4], plain.features[8], None]
    nxt = [(plain.features[3], 1), (plain.features[7], 1), (plain.classifier[0], 4), (plain.classifier[2], 1)]
    extra = 0
    for layer, bn, (consumer, block) in zip(layers, bns, nxt):
        dead = (layer.weight.flatten(1) == 0).all(1)
        cols = dead.repeat_interleave(block)
        extra += int((consumer.weight[:, cols] != 0).sum()) + int((layer.bias[dead] != 0).sum())
        extra += 0 if bn is None else int((bn.weight[dead] != 0).sum() + (bn.bias[dead] != 0).sum())
    assert pruners.sparsity_report(model)["params_remaining"] - extra == expected


def _checkpoint(tmp_path, targets, method, name="run", legacy=False):
    """A run directory as raysweep.prune writes it: final.pt (payload with config) and config.json."""
    model = (legacy_masked if legacy else masked)("digits_cnn", targets, method)
    run = tmp_path / name
    run.mkdir()
    cfg = RunConfig(method=method, targets=targets)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, run / "final.pt")
    cfg.save(run / "config.json")
    return run / "final.pt", model


def test_cli_exports_a_compact_file_that_plain_torch_loads(tmp_path, capsys):
    ckpt, model = _checkpoint(tmp_path, {"features.*": 0.5, "classifier.0.weight": 0.5}, "filter")
    out = tmp_path / "digits.pt2"
    assert export.main([str(ckpt.parent), "--out", str(out), "-q"]) == 0  # a run directory works
    printed = capsys.readouterr().out
    assert "[torch.export]" in printed and "channels removed: " in printed
    x = torch.randn(5, 1, 8, 8)
    torch.save({"x": x, "y": model(x).detach()}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        m = torch.export.load({str(out)!r}).module()
        io = torch.load({str(tmp_path / 'io.pt')!r})
        diff = (m(io["x"]) - io["y"]).abs().max().item()
        params = sum(p.numel() for p in m.parameters())
        bad = sorted(k for k in sys.modules if k.split(".")[0] in ("raysweep", "pruners"))
        print(diff, params, bad)
    """)
    res = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    diff, params, bad = res.stdout.split(maxsplit=2)
    assert float(diff) <= TOL and bad.strip() == "[]"
    _, report = compact(model, torch.randn(1, 1, 8, 8))
    assert int(params) == report.params_after


def test_irregular_and_nm_exports_say_zeros_bring_no_speed_and_2to4_is_skipped(tmp_path, capsys):
    ckpt, _ = _checkpoint(tmp_path, {"features.3.weight": "m4n2", "classifier.*": "m4n2"}, "nm")
    assert export.main([str(ckpt), "--out", str(tmp_path / "nm.pt2"), "-q", "--no-compact"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("2:4 sparse kernels skipped" in ln for ln in lines) == 1
    skipped = next(ln for ln in lines if "2:4 sparse kernels skipped" in ln)
    assert "no CUDA GPU here" in skipped and "compute capability >= 8.0" in skipped
    assert any("stay in place inside dense kernels: no speed gain" in ln for ln in lines)


def test_semi_structured_check_reasons(monkeypatch):
    model = masked("digits_cnn", {"classifier.*": "m4n2"}, "nm")
    plain = squashed_copy(model)
    assert is_2to4(plain.classifier[0].weight) and is_2to4(plain.classifier[2].weight)
    assert not is_2to4(plain.features[3].weight.flatten(1)) and not is_2to4(torch.ones(4, 8))
    if not torch.cuda.is_available():
        assert semi_structured_check(model, (1, 8, 8))["status"] == "skipped"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    res = semi_structured_check(model, (1, 8, 8))
    assert res == {"status": "skipped", "reason": "Tesla T4 has compute capability 7.5; 2:4 kernels need >= 8.0"}


def test_torchscript_fallback_when_torch_export_fails(tmp_path):
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    model = DataDependent().eval()
    x = torch.ones(2, 4)
    assert save_model(model, x, tmp_path / "m.pt2") == "torchscript"
    loaded = load_exported(tmp_path / "m.pt2")
    assert torch.allclose(loaded(x), model(x)) and torch.allclose(loaded(-x), model(-x))  # both branches


def _error(capsys, argv) -> str:
    assert export.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_cli_errors_exit_2_with_one_message(tmp_path, capsys):
    out = str(tmp_path / "o.pt2")
    assert "checkpoint not found" in _error(capsys, [str(tmp_path / "nope.pt"), "--out", out])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert "corrupt or not a torch weights file" in _error(capsys, [str(bad), "--out", out])
    ckpt, _ = _checkpoint(tmp_path, {"features.*": 0.5}, "filter")
    assert "does not fit model 'resnet20'" in _error(capsys, [str(ckpt), "--out", out, "--model", "resnet20"])
    assert "unknown model 'nosuchnet'" in _error(capsys, [str(ckpt), "--out", out, "--model", "nosuchnet"])
    bare = tmp_path / "bare.pt"
    torch.save(create_model("digits_cnn").state_dict(), bare)
    assert "pass --model" in _error(capsys, [str(bare), "--out", out])
    assert "is a directory" in _error(capsys, [str(ckpt), "--out", str(tmp_path)])
    assert not (tmp_path / "o.pt2").exists()


def test_plain_state_dict_with_model_flag_and_other_class_count(tmp_path):
    net = create_model("digits_cnn", num_classes=7)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    model, info = load_checkpoint(tmp_path / "w.pt", model="digits_cnn", dataset="digits")
    assert model.classifier[2].out_features == 7 and info["input_size"] == (1, 8, 8)
    (tmp_path / "config.json").write_text(json.dumps({"model": "digits_cnn", "dataset": "digits"}))
    assert load_checkpoint(tmp_path / "w.pt")[1]["model"] == "digits_cnn"
