"""``python -m raysweep.prune`` per method, its arguments through the loop in this process (no Ray):
each method's layer table is what its targets ask for. The same command on Ray Train, end to end,
is tests/test_runs.py (one method there: the Ray path does not depend on the method)."""
from __future__ import annotations

import pandas as pd
import pytest

from helpers import run_local
from raysweep.prune import build_parser, config_from_prune_args


def layer_table(argv: list[str]) -> pd.DataFrame:
    """The layers.csv a prune run with ``argv`` writes, from its final checkpoint."""
    session = run_local(config_from_prune_args(build_parser().parse_args(argv)))
    return pd.DataFrame(session.state.layers).set_index("name")


@pytest.mark.parametrize("method,target", [("filter", "0.3"), ("stripe", "0.4"), ("pattern", "0.7"), ("nm", "m4n2")])
def test_every_method_prunes_what_its_targets_ask(dense_digits, tmp_path, method, target):
    layers = layer_table(["--prune_type", method, "--ratio", target, "--weight_file", str(dense_digits / "final.pt"),
                          "--epochs", "1", "--output", str(tmp_path), "--print_freq", "0"])  # fmt: skip
    if method in ("pattern", "stripe"):
        # pattern prunes 3x3 convs only; the classifier's Linear layers stay dense and say why
        pruned = layers[layers["kind"] == "conv"].iloc[1:] if method == "pattern" else layers
        assert (pruned["sparsity"] > 0).all()
    if method == "pattern":
        assert layers.loc["classifier.0.weight", "sparsity"] == 0.0
        assert "3x3" in str(layers.loc["classifier.0.weight", "skipped"])
    if method == "nm":
        # the first conv has 1 input channel: left dense and reported as skipped
        assert layers.loc["features.0.weight", "sparsity"] == 0.0
        assert isinstance(layers.loc["features.0.weight", "skipped"], str)
        assert layers.loc["features.3.weight", "sparsity"] == 0.5
    if method == "filter":
        out, fan_in = 32, 16 * 9  # features.3 is a 16 -> 32 3x3 conv
        assert layers.loc["features.3.weight", "zeros"] == int(0.3 * out + 0.5) * fan_in
