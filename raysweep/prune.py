"""``python -m raysweep.prune``: prune a trained model and fine-tune it on Ray Train with DDP."""
from __future__ import annotations

import argparse
from typing import Optional

from raysweep.cli import base_parser, config_from_args, main_with
from raysweep.config import RunConfig

PROG = "python -m raysweep.prune"


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(PROG, "Prune (one method, per-layer targets, a schedule) and fine-tune on Ray Train.", RunConfig(epochs=10, lr=0.01))
    add = p.add_argument
    add("--prune_type", required=False, default=None, help="irregular, filter, stripe, pattern, nm (or the reference names irre_prune, ...)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--config_file", default=None, help="per-layer targets, the reference project's prune_config YAML")
    group.add_argument("--ratio", default=None, help="one target for every prunable layer: a ratio in [0, 1] or mXnY")
    add("--schedule", choices=["oneshot", "regrow", "agp"], default=None, help="default: regrow if --prune_freq/--retrain_epoch given, else oneshot")
    add("--prune_freq", type=int, default=None, help="regrow: recompute masks every N epochs")
    add("--retrain_epoch", type=int, default=None, help="regrow: freeze masks from this epoch")
    add("--agp_start", type=int, default=0, help="agp: first pruning epoch")
    add("--agp_end", type=int, default=None, help="agp: epoch the final sparsity is reached (default: half the epochs)")
    add("--agp_freq", type=int, default=1, help="agp: epochs between mask updates")
    return p


def config_from_prune_args(args: argparse.Namespace) -> RunConfig:
    import pruners

    cfg = config_from_args(args)
    if not args.prune_type:
        raise ValueError("--prune_type is required (one of: " + ", ".join(pruners.list_methods()) + ")")
    cfg.method = pruners.get_method(args.prune_type).name
    if args.config_file:
        cfg.targets = pruners.load_ratio_config(args.config_file)
    elif args.ratio is not None:
        cfg.targets = {"*": pruners.validate_target(args.ratio)}
    else:
        raise ValueError("give per-layer targets with --config_file FILE or one target with --ratio R")
    schedule = args.schedule or ("regrow" if args.prune_freq or args.retrain_epoch else "oneshot")
    params: dict = {}
    if schedule == "regrow":
        params = {"prune_freq": args.prune_freq or 5, "retrain_epoch": args.retrain_epoch if args.retrain_epoch is not None else cfg.epochs // 2}
    elif schedule == "agp":
        params = {"start_epoch": args.agp_start, "end_epoch": args.agp_end if args.agp_end is not None else max(args.agp_start + 1, cfg.epochs // 2), "frequency": args.agp_freq}
    cfg.schedule, cfg.schedule_params = schedule, params
    return cfg


def main(argv: Optional[list[str]] = None) -> int:
    return main_with(build_parser(), config_from_prune_args, PROG, argv)


if __name__ == "__main__":
    raise SystemExit(main())
