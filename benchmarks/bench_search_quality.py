"""Does raysweep's search find a better front than hand-set or random ratios? (issue: performance)

Same budget for every strategy (24 trials, the same fine-tune epochs, the embedded digits data,
the same dense weights), several seeds, hypervolume of the accuracy-sparsity front (reference
point: accuracy 0.9, sparsity 0; a trial below 90% accuracy adds nothing), per method and overall:

  (a) uniform   the reference project's way: one ratio for every layer, a grid over that ratio
                (about 5 values per method; the first conv / output layer kept as the space keeps them);
  (b) random    Ray Tune random search over the per-layer ratios of the default space;
  (c) default   raysweep's default strategy: the shipped default space (``--space``), its budget
                set to 24 trials in all;
  shaped        (a)'s grid of global targets, LAMP-shaped for irregular/filter/stripe (a candidate).

    python benchmarks/bench_search_quality.py [--seeds 0 1 2] [--space digits] [--trials 24]

Prints mean +- sd of the hypervolume per strategy and method, and the margin of (c) over the
better of (a) and (b); a negative margin is a loss and is printed as such.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from raysweep.ray_env import init_ray
from raysweep.results.collect import build_reports
from raysweep.results.pareto import hypervolume
from raysweep.space import load_space, to_mapping
from raysweep.sweep.driver import dense_weights, run_sweep

OBJECTIVES = {"accuracy": "max", "sparsity": "max"}
REFERENCE = {"accuracy": 0.9, "sparsity": 0.0}
METHODS = ("irregular", "filter", "stripe", "pattern", "nm")
# (a): one value for every layer, per method; 24 in all. The layers the default space pins
# (first conv for pattern/nm, output layer for filter/stripe) stay pinned, as a person would.
UNIFORM_GRID = {
    "irregular": ([0.5, 0.6, 0.7, 0.8, 0.9], {}),
    "filter": ([0.1, 0.2, 0.3, 0.4, 0.5], {"classifier.2.weight": 0.0}),
    "stripe": ([0.1, 0.2, 0.3, 0.4, 0.5], {"classifier.2.weight": 0.0}),
    "pattern": ([0.56, 0.65, 0.75, 0.85], {"features.0.weight": 0.0}),
    "nm": (["m4n2", "m4n1", "m8n2", "m8n1", "m8n4"], {"features.0.weight": 0.0}),
}


def uniform_space(base: dict, trials: int) -> dict:
    space = copy.deepcopy(base)
    points = [
        {"label": f"uniform-{m}-{v}", "method": m, "ratios": {"*": v, **pinned}}
        for m, (values, pinned) in UNIFORM_GRID.items() for v in values
    ]
    space.update(points=points[:trials], trials=0, search="random")
    return space


def shaped_space(base: dict, trials: int, family: str = "lamp") -> dict:
    """(a)'s grid of global targets, each shaped by an allocation family where one applies
    (irregular, filter, stripe); pattern and N:M keep (a)'s uniform grid. Then the space's
    searcher fills whatever budget the grid leaves."""
    space = uniform_space(base, trials)
    for point in space["points"]:
        if point["method"] in ("irregular", "filter", "stripe"):
            target = point["ratios"].pop("*")
            point["allocation"] = {"family": family, "target": target}
    space["trials"] = max(0, trials - len(space["points"]))
    return space


def random_space(base: dict, trials: int) -> dict:
    space = copy.deepcopy(base)
    space.update(points=[], trials=trials, search="random")
    return space


def default_space(base: dict, trials: int) -> dict:
    space = copy.deepcopy(base)
    space["trials"] = max(0, trials - len(space.get("points", [])))
    return space


STRATEGIES = {"uniform": uniform_space, "random": random_space, "default": default_space, "shaped": shaped_space}


def front_volumes(trials: pd.DataFrame) -> dict[str, float]:
    done = trials[trials["status"] == "TERMINATED"]
    volumes = {"all": hypervolume(done, OBJECTIVES, REFERENCE)}
    for method in METHODS:
        volumes[method] = hypervolume(done[done["method"] == method], OBJECTIVES, REFERENCE)
    return volumes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--space", default="digits", help="the space strategy (c) runs; (a) and (b) take its model, data and ranges")
    p.add_argument("--baseline_space", default="digits_layerwise", help="the space whose per-layer ranges (b) searches")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--strategies", nargs="+", default=["uniform", "random", "default"], choices=list(STRATEGIES),
                   help="shaped: (a)'s target grid shaped by LAMP, a candidate default")
    p.add_argument("--storage", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    storage = Path(args.storage or tempfile.mkdtemp(prefix="raysweep-quality-")).resolve()

    init_ray()
    spaces = {"default": to_mapping(load_space(args.space)), "baseline": to_mapping(load_space(args.baseline_space))}
    weights = dense_weights(load_space(spaces["baseline"]), storage, None)  # one dense model for all
    rows = []
    for seed in args.seeds:
        for name in args.strategies:
            base = spaces["default" if name in ("default", "shaped") else "baseline"]
            mapping = STRATEGIES[name]({**base, "seed": seed, "dense": weights}, args.trials)
            start = time.perf_counter()
            exp = run_sweep(load_space(mapping), storage, f"{name}-s{seed}")
            trials = pd.read_csv(build_reports(exp, OBJECTIVES)["trials"])
            rows.append({"strategy": name, "seed": seed, "trials": len(trials), "wall_s": time.perf_counter() - start,
                         **front_volumes(trials)})
            print(f"seed {seed} {name:8s}: {len(trials)} trials in {rows[-1]['wall_s']:.0f} s, hypervolume {rows[-1]['all']:.4f}", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(storage / "search_quality.csv", index=False)

    print(f"\nhypervolume of the accuracy-sparsity front, reference {REFERENCE}, {args.trials} trials, seeds {args.seeds}")
    print(f"(c) = space {args.space!r}; load average {os.getloadavg()[0]:.2f}; per-seed rows: {storage / 'search_quality.csv'}")
    columns = ["all", *METHODS]
    print(f"{'strategy':10s}" + "".join(f"{c:>18s}" for c in columns))
    stats = {}
    for name in args.strategies:
        sub = frame[frame["strategy"] == name]
        stats[name] = {c: (sub[c].mean(), sub[c].std(ddof=1) if len(sub) > 1 else 0.0) for c in columns}
        print(f"{name:10s}" + "".join(f"{m:>11.4f} +-{s:.4f}" for m, s in stats[name].values()))
    if {"default", "uniform", "random"} <= set(stats):
        margins = {c: stats["default"][c][0] - max(stats["uniform"][c][0], stats["random"][c][0]) for c in columns}
        print(f"{'margin':10s}" + "".join(f"{v:>+18.4f}" for v in margins.values()))
        losses = [c for c, v in margins.items() if v <= 0]
        print("(c) ahead of both on mean hypervolume everywhere" if not losses else f"(c) NOT ahead on: {', '.join(losses)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
