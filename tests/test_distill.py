"""Distillation from the dense model: the loss against a hand-computed example, the teacher
(loaded once, frozen, eval mode, on the trial's device, under no_grad), the space field searched
like lr, and the values reaching trials.csv."""
from __future__ import annotations

import math

import pytest
import torch

import raysweep.trial.loop as loop_mod
from raysweep import prune
from raysweep.config import RunConfig
from raysweep.results.collect import _METRIC_COLUMNS
from raysweep.space import SpaceError, flatten_config, load_space, to_mapping, to_tune, trial_run_config
from raysweep.trial.checkpoint import read_weights
from raysweep.trial.distill import distillation_loss
from helpers import run_local


def test_the_loss_matches_a_hand_computed_example():
    """Student logits (1, 0), teacher (0, 1), label 0, alpha 0.5, T 2:
    CE = log(1 + e^-1); at T = 2 the student's softmax is (p, q) with p = e^.5 / (e^.5 + 1), the
    teacher's is (q, p), so KL(teacher || student) = q log(q/p) + p log(p/q) = (p - q) * 0.5;
    loss = 0.5 CE + 0.5 * 2^2 * KL."""
    p = math.exp(0.5) / (math.exp(0.5) + 1)
    q = 1 - p
    ce = math.log(1 + math.exp(-1))
    kl = (p - q) * 0.5
    expected = 0.5 * ce + 0.5 * 4 * kl
    got = distillation_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]), alpha=0.5, temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-6) and expected == pytest.approx(0.40154945, rel=1e-6)
    # alpha 0 is plain cross-entropy; alpha 1 with the teacher's own logits is 0
    assert distillation_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]), 0.0, 2.0).item() == pytest.approx(ce)
    same = torch.tensor([[0.3, -1.2, 2.0]])
    assert distillation_loss(same, same, torch.tensor([2]), 1.0, 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_the_teacher_is_the_dense_model_loaded_once_frozen_in_eval_mode(dense_digits, monkeypatch):
    built, grad_in_forward = [], []

    def load_and_watch(cfg, new_model, compute):
        teacher = load_teacher(cfg, new_model, compute)
        teacher.register_forward_hook(lambda m, i, o: grad_in_forward.append(torch.is_grad_enabled()))
        built.append(teacher)
        return teacher

    load_teacher = loop_mod.load_teacher
    monkeypatch.setattr(loop_mod, "load_teacher", load_and_watch)
    cfg = RunConfig(epochs=2, lr=0.01, print_freq=0, weight_file=str(dense_digits / "final.pt"), method="irregular",
                    targets={"*": 0.9}, distill_alpha=0.7, distill_temperature=4.0)  # fmt: skip
    session = run_local(cfg)
    assert len(built) == 1  # once per trial, not per epoch
    teacher = built[0]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert grad_in_forward and not any(grad_in_forward)  # every teacher forward ran under no_grad
    assert all(p.device == session.device() for p in teacher.parameters())
    dense, _ = read_weights(dense_digits / "final.pt")
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in dense.items() if k in teacher.state_dict())
    last = session.reports[-1]
    assert (last["distill_alpha"], last["distill_temperature"]) == (0.7, 4.0)


def test_without_alpha_no_teacher_is_loaded(monkeypatch):
    monkeypatch.setattr(loop_mod, "load_teacher", lambda *a: pytest.fail("a teacher was loaded with distill_alpha 0"))
    session = run_local(RunConfig(epochs=1, print_freq=0))
    assert session.reports[-1]["distill_alpha"] == 0.0


def test_the_flags_need_a_teacher_and_sane_values(no_ray, capsys, tmp_path):
    base = ["--prune_type", "irregular", "--ratio", "0.5", "--output", str(tmp_path)]
    assert prune.main([*base, "--distill_alpha", "0.5"]) == 2
    assert "--distill_alpha needs a teacher: the dense model's weights (--weight_file)" in capsys.readouterr().err
    assert prune.main([*base, "--distill_alpha", "1.5", "--distill_temperature", "0"]) == 2
    err = capsys.readouterr().err
    assert "--distill_alpha must be in [0, 1], got 1.5" in err and "--distill_temperature must be > 0" in err


def test_distill_is_searched_like_lr_and_reaches_the_trials_table():
    space = load_space({
        "trials": 2, "methods": {"irregular": {"*": 0.9}},
        "distill": {"alpha": {"uniform": [0.0, 0.9]}, "temperature": {"choice": [2, 4, 8]}},
        "points": [{"method": "irregular", "ratios": {"*": 0.97}}],
    })  # fmt: skip
    from ray.tune.search.sample import Categorical, Float

    flat = flatten_config(to_tune(space)[0])
    assert isinstance(flat["distill/alpha"], Float) and isinstance(flat["distill/temperature"], Categorical)
    cfg = trial_run_config(space, {"method": "irregular", "distill": {"alpha": 0.3, "temperature": 8}}, RunConfig())
    assert (cfg.distill_alpha, cfg.distill_temperature) == (0.3, 8.0) and type(cfg.distill_temperature) is float
    point = trial_run_config(space, {"point": 0}, RunConfig())
    assert (point.distill_alpha, point.distill_temperature) == (0.45, 2.0)  # a distribution's representative
    assert load_space(to_mapping(space)).distill == space.distill
    assert {"distill_alpha", "distill_temperature"} <= set(_METRIC_COLUMNS.values())
    with pytest.raises(SpaceError, match=r"distill.alpha: must be a number in \[0, 1\]"):
        load_space({"distill": {"alpha": {"uniform": [0.5, 1.5]}}})
