"""How a trial computes and what it optimises: precision, channels_last, compile, the LR schedule,
label smoothing; a resumed run continues exactly with each of them on; fp16 without CUDA is
refused before any Ray work."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from raysweep import prune, train
from raysweep.config import RunConfig
from raysweep.space import SpaceError, load_space
from raysweep.trial.epoch import TrainStep
from raysweep.trial.optim import LR_SCHEDULES, cosine_factor
from raysweep.trial.precision import PRECISIONS, Compute, PrecisionError
from raysweep.trial.sessions import LocalSession

from helpers import run_local as run


class _Stop(Exception):
    pass


class StopAfter(LocalSession):
    """A run killed right after reporting ``epoch`` (its checkpoint is the resume point)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.stop_epoch = epoch

    def report(self, metrics, state, epoch) -> None:
        super().report(metrics, state, epoch)
        if epoch == self.stop_epoch:
            raise _Stop


def pruned(dense_digits, **options) -> RunConfig:
    """A short fine-tune of the dense digits model, irregular 0.8 unless ``options`` say otherwise."""
    recipe = dict(epochs=2, lr=0.01, seed=0, print_freq=0, method="irregular", targets={"*": 0.8})
    return RunConfig(weight_file=str(dense_digits / "final.pt"), **{**recipe, **options})


# ---------------------------------------------------------------- fp16 needs CUDA


def test_fp16_without_cuda_is_refused_with_what_to_use_instead():
    with pytest.raises(PrecisionError, match=r"fp16 needs a CUDA GPU .*use bf16 \(works on CPU and GPU\) or fp32"):
        Compute("fp16", torch.device("cpu"))
    session = LocalSession()
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU"):
        run(RunConfig(epochs=1, precision="fp16", print_freq=0), session)
    assert session.reports == []  # refused before any training


def test_fp16_without_cuda_is_refused_by_the_commands_and_the_space_before_ray(no_ray, capsys, tmp_path):
    assert prune.main(["--prune_type", "irregular", "--ratio", "0.5", "--precision", "fp16", "--output", str(tmp_path)]) == 2
    assert "precision fp16 needs a CUDA GPU (--use_gpu is not given)" in capsys.readouterr().err
    assert train.main(["--precision", "fp16", "--use_gpu", "--output", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SpaceError, match=r"precision: precision fp16 needs a CUDA GPU \(resources.gpus_per_worker is 0\)"):
        load_space({"precision": "fp16"})
    assert not list(tmp_path.iterdir())  # nothing written


def test_precisions_and_what_they_need():
    assert set(PRECISIONS) == {"fp32", "bf16", "fp16"}
    assert PRECISIONS["fp16"].scaled and PRECISIONS["fp16"].needs_cuda and not PRECISIONS["bf16"].needs_cuda
    compute = Compute("bf16", torch.device("cpu"))
    with compute.autocast():
        assert torch.nn.Linear(4, 2)(torch.zeros(1, 4)).dtype == torch.bfloat16
    assert compute.state_dict() is None  # no GradScaler outside fp16


# ---------------------------------------------------------------- channels_last, compile


@pytest.mark.parametrize("method,target", [("irregular", 0.8), ("filter", 0.5), ("stripe", 0.5), ("pattern", 0.6), ("nm", "m4n2")])
def test_channels_last_trains_with_the_masks_of_the_default_layout(method, target, dense_digits):
    """Masks are chosen on the weights' values, whatever their strides: NHWC gives the same ones."""
    targets = {"*": target, "features.0.weight": 0.0}
    states = [run(pruned(dense_digits, epochs=1, method=method, targets=targets, channels_last=cl), LocalSession()).state
              for cl in (False, True)]  # fmt: skip
    masks = [{k: v for k, v in s.model.items() if k.endswith(".mask")} for s in states]
    assert masks[0] and all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert states[1].metrics["sparsity"] == states[0].metrics["sparsity"] > 0
    assert states[1].model["features.3.parametrizations.weight.original"].is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- schedules and the loss


def test_cosine_warms_up_linearly_then_anneals_to_zero():
    assert set(LR_SCHEDULES) == {"multistep", "cosine"}
    assert [cosine_factor(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine_factor(4, 4, 20) == 1.0 and cosine_factor(12, 4, 20) == pytest.approx(0.5)
    assert cosine_factor(19, 4, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 16)))
    session = run(RunConfig(epochs=2, lr=0.1, print_freq=0, lr_schedule="cosine", warmup_epochs=0.5), LocalSession())
    lrs = [r["lr"] for r in session.reports]
    assert lrs[0] == pytest.approx(0.1 * cosine_factor(12, 6, 24)) and lrs[1] == pytest.approx(0.0, abs=1e-12)


def test_label_smoothing_is_the_loss_the_step_minimises():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    expected = F.cross_entropy(model(x), y, label_smoothing=0.2)
    from raysweep.trial.distill import Criterion
    from raysweep.trial.optim import build_lr_schedule

    cfg = RunConfig(label_smoothing=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    step = TrainStep(model, opt, Compute("fp32", torch.device("cpu")), Criterion(cfg), build_lr_schedule(opt, cfg, 1))
    assert step(x, y).item() == pytest.approx(expected.item())


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("options", [
    {}, {"channels_last": True}, {"precision": "bf16"}, {"compile": True},
    {"lr_schedule": "cosine", "warmup_epochs": 0.5}, {"label_smoothing": 0.1},
    {"distill_alpha": 0.5, "distill_temperature": 2.0},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "fp32")  # fmt: skip
def test_a_resumed_run_continues_exactly_with_each_option_on(options, dense_digits, monkeypatch):
    """Killed after epoch 0 and resumed from its checkpoint, a run ends with the weights, losses
    and accuracies of the same run uninterrupted."""
    if options.get("compile"):  # dynamo's graph capture without inductor's C++ build (minutes here)
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg = pruned(dense_digits, **options)
    whole = run(cfg, LocalSession())
    first = StopAfter(0)
    with pytest.raises(_Stop):
        run(cfg, first)
    rest = run(cfg, LocalSession(resume=first.state))
    keys = ("train_loss", "accuracy", "val_loss", "lr", "sparsity")
    assert [[r[k] for k in keys] for r in whole.reports] == [[r[k] for k in keys] for r in first.reports + rest.reports]
    assert whole.state.model.keys() == rest.state.model.keys()
    for k, v in whole.state.model.items():  # tensors bit for bit; the masks' extra state (plain values) equal
        assert torch.equal(v, rest.state.model[k]) if isinstance(v, torch.Tensor) else v == rest.state.model[k], k
    untimed = [[{k: v for k, v in m.items() if k != "train_s"} for m in s.state.history] for s in (whole, rest)]
    assert rest.state.rng is not None and untimed[0] == untimed[1]
