"""What each pruning method does to the architectures users bring: a markdown table, computed.

Rows are the architectures of ``tests/test_architectures.py`` (depthwise and grouped convs,
Conv1d, ConvTranspose2d, nn.MultiheadAttention, nn.TransformerEncoderLayer, an untraceable
forward); columns are the methods at the targets that file uses. Each cell comes from a real
``pruners.prepare`` checked by that file's ``check_case`` (every mask recomputed from the weights):
the layers pruned exactly, and the ones left dense with the reason ``prepare`` logged (as
numbered notes). A last column compacts the filter-pruned model (``pruners.compact``).

    python benchmarks/architecture_table.py [--archs "Conv1d" ...] [--methods nm ...]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

import pruners
from pruners.compact import compact

ROOT = Path(__file__).resolve().parents[1]


def _cases() -> ModuleType:
    """tests/test_architectures.py: the models and the exactness checks live there, once."""
    spec = importlib.util.spec_from_file_location("test_architectures", ROOT / "tests" / "test_architectures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


class Notes:
    """Reasons, numbered once each, for the cells to refer to."""

    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}

    def ref(self, reason: str) -> str:
        return f"[{self.reasons.setdefault(reason, len(self.reasons) + 1)}]"

    def lines(self) -> list[str]:
        return [f"{n}. {reason}" for reason, n in self.reasons.items()]


def _short(name: str) -> str:
    return name.removesuffix(".weight")


def cell(cases: ModuleType, arch: str, method: str, notes: Notes) -> str:
    """What ``method`` prunes in ``arch``, verified; a failed check or a crash says so instead."""
    try:
        result = cases.check_case(arch, method)
    except AssertionError as exc:
        return f"**NOT EXACT**: {str(exc).splitlines()[0]}"
    except Exception as exc:  # noqa: BLE001 -- the table reports a crash rather than stopping at it
        return f"**CRASH** {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    own = [_short(n) for n in result.pruned]
    followers = [n for n in result.derived if n not in result.dense]
    dense = {n: r for n, r in result.dense.items() if n not in result.derived}
    parts = []
    if own and not result.dense:
        parts.append(f"all {len(own)} exact" if len(own) > 1 else f"{own[0]} exact")
    elif own:
        parts.append("exact: " + ", ".join(own))
    else:
        parts.append("nothing pruned")
    if followers:
        parts.append(f"+{len(followers)} tensor(s) follow dead channels")
    for name, reason in dense.items():
        parts.append(f"{_short(name)} dense {notes.ref(reason)}")
    for name in (n for n in result.derived if n in result.dense):  # its own outputs stay, its inputs follow
        parts.append(f"{_short(name)}: input columns of dead channels only {notes.ref(result.dense[name])}")
    return "; ".join(parts)


def compaction_cell(cases: ModuleType, arch: str, notes: Notes) -> str:
    """Filter pruning at 0.5 on every layer, compacted: channels removed, or why compaction is skipped."""
    spec = cases.ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = spec.build().eval()
    x = torch.randn(spec.input_shape)
    pruners.prepare(model, {"*": 0.5}, "filter", example_input=x)
    try:
        _, report = compact(model, x)
    except ValueError as exc:
        return f"skipped {notes.ref(str(exc))}"
    if not report.channels_dead:
        return "nothing removed: no free channel group has a dead channel"
    return f"{report.channels_removed} of {report.channels_dead} dead channels removed, max diff {report.max_abs_diff:.1e}"


def table(archs: list[str], methods: list[str]) -> str:
    cases = _cases()
    notes = Notes()
    header = ["architecture", *[f"{m} ({cases.TARGETS[m]})" for m in methods], "compact (filter 0.5)"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arch in archs:
        cells = [cell(cases, arch, m, notes) for m in methods] + [compaction_cell(cases, arch, notes)]
        rows.append("| " + " | ".join([arch, *cells]) + " |")
    return "\n".join(rows + ["", "Dense because:", *notes.lines()])


def main(argv: list[str] | None = None) -> None:
    cases = _cases()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(cases.ARCHITECTURES), choices=list(cases.ARCHITECTURES))
    parser.add_argument("--methods", nargs="+", default=list(cases.TARGETS), choices=list(cases.TARGETS))
    args = parser.parse_args(argv)
    print(table(args.archs, args.methods))


if __name__ == "__main__":
    main()
