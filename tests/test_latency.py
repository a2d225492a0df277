"""Latency helpers: what they call, in which mode and thread count, and what they return (no timing asserts)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pruners
from raysweep.speed.latency import measure_latency, measure_pair, trial_latency
from raysweep.models import create_model


class Recorder(nn.Module):
    """Records batch size, thread count, grad mode and training flag of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls: list[tuple[int, int, bool, bool]] = []

    def forward(self, x):
        self.calls.append((x.shape[0], torch.get_num_threads(), torch.is_grad_enabled(), self.training))
        return self.fc(x)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_measure_latency_calls_warmup_plus_repeats_per_batch_in_eval_no_grad_one_thread(two_threads):
    model = Recorder().train()
    out = measure_latency(model, (4,), batch_sizes=(1, 64), threads=1, warmup=2, repeats=3)
    assert set(out) == {"latency_ms_b1", "latency_ms_b64"} and all(v > 0 for v in out.values())
    assert model.calls == [(1, 1, False, False)] * 5 + [(64, 1, False, False)] * 5
    assert torch.get_num_threads() == 2 and model.training and model.fc.training  # restored


def test_measure_pair_interleaves_models_on_the_same_batch(two_threads):
    a, b = Recorder(), Recorder()
    out = measure_pair({"a": a, "b": b}, (4,), batch_sizes=(3,), warmup=1, repeats=2)
    assert set(out) == {"a", "b"} and set(out["a"]) == {"latency_ms_b3"}
    assert a.calls == b.calls == [(3, 1, False, False)] * 3


def test_threads_restored_when_the_model_fails(two_threads):
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(Boom(), (4,), threads=1)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("kwargs", [{"batch_sizes": ()}, {"batch_sizes": (0,)}, {"repeats": 0}, {"threads": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        measure_latency(Recorder(), (4,), **kwargs)


def _masked_digits() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("digits_cnn").eval()
    pruners.prepare(model, {"features.*": 0.5, "classifier.0.weight": 0.5}, "filter")
    return model


def test_trial_latency_figures_and_the_masked_model_is_left_alone():
    model = _masked_digits()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
    out = trial_latency(model, None, (1, 8, 8), warmup=1, repeats=2)
    assert set(out) == {
        "latency_ms_b1", "latency_ms_b64", "dense_latency_ms_b1", "dense_latency_ms_b64",
        "speedup_b1", "speedup_b64", "speedup", "params_compact", "channels_removed",
    }  # fmt: skip
    assert out["speedup"] == out["speedup_b64"] == out["dense_latency_ms_b64"] / out["latency_ms_b64"]
    assert out["channels_removed"] > 0 and out["params_compact"] < sum(p.numel() for p in create_model("digits_cnn").parameters())
    assert pruners.is_masked(model)
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_trial_latency_with_a_dense_model_and_the_exported_program():
    dense = create_model("digits_cnn").eval()
    out = trial_latency(_masked_digits(), dense, (1, 8, 8), batch_sizes=(2,), warmup=0, repeats=1, export=True)
    assert set(out) >= {"latency_ms_b2", "dense_latency_ms_b2", "speedup"}
    assert out["speedup"] == out["dense_latency_ms_b2"] / out["latency_ms_b2"]
