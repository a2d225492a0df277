"""``python -m raysweep.prune``: prune a trained model and fine-tune it on Ray Train with DDP."""
from __future__ import annotations

import argparse
from typing import Optional

from raysweep.trial.flags import absolute, base_parser, config_from_args, main_with
from raysweep.config import RunConfig

PROG = "python -m raysweep.prune"


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(PROG, "Prune (one method, per-layer targets, a schedule) and fine-tune on Ray Train.", RunConfig(epochs=10, lr=0.01))
    add = p.add_argument
    add("--prune_type", required=False, default=None, help="irregular, filter, stripe, pattern, nm (or the reference names irre_prune, ...)")
    add("--from-trial", dest="from_trial", default=None, metavar="SWEEP_DIR/TRIAL_ID",
        help="run one sweep trial again as a standalone run: its model, data, dense weights, targets, schedule and recipe "
             "(--output, --name, --workers and --address still apply)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--config_file", default=None, help="per-layer targets, the reference project's prune_config YAML")
    group.add_argument("--ratio", default=None, help="one target for every prunable layer: a ratio in [0, 1] or mXnY")
    add("--schedule", choices=["oneshot", "regrow", "agp"], default=None, help="default: regrow if --prune_freq/--retrain_epoch given, else oneshot")
    add("--prune_freq", type=int, default=None, help="regrow: recompute masks every N epochs")
    add("--retrain_epoch", type=int, default=None, help="regrow: freeze masks from this epoch")
    add("--agp_start", type=int, default=0, help="agp: first pruning epoch")
    add("--agp_end", type=int, default=None, help="agp: epoch the final sparsity is reached (default: half the epochs)")
    add("--agp_freq", type=int, default=1, help="agp: epochs between mask updates")
    add("--nm_permute", action="store_true", help="nm: permute input channels first (Pool & Yu 2021) so N:M keeps more magnitude")
    add("--allocation", default=None, metavar="FAMILY:TARGET",
        help="one global target spread by a family instead of per-layer targets, e.g. lamp:0.9 (uniform, erk, global_magnitude, lamp)")
    add("--measure_latency", action="store_true", help="after the last epoch, time the compacted model on CPU (batch 1 and 64)")
    return p


def _allocation(spec: str) -> dict:
    import pruners.allocation as allocation

    family, sep, target = spec.partition(":")
    try:
        value = float(target)
    except ValueError:
        value = -1.0
    if not sep or not 0.0 <= value <= 1.0:
        raise ValueError(f"--allocation takes FAMILY:TARGET with a target in [0, 1], e.g. lamp:0.9; got {spec!r}")
    chosen = allocation.get_family(family)
    if chosen.needs_table:
        raise ValueError(f"--allocation {chosen.name} needs a sensitivity table: use it from a search space (see search_spaces/README.md)")
    return {"family": chosen.name, "target": value}


def config_from_prune_args(args: argparse.Namespace) -> RunConfig:
    import pruners
    import pruners.allocation

    if args.from_trial:
        return trial_config(args)
    cfg = config_from_args(args)
    if not args.prune_type:
        raise ValueError("--prune_type is required (one of: " + ", ".join(pruners.list_methods()) + ")")
    cfg.method = pruners.get_method(args.prune_type).name
    if args.allocation:
        cfg.allocation = _allocation(args.allocation)
        pruners.allocation.check_method(cfg.method)
        cfg.targets = pruners.load_ratio_config(args.config_file) if args.config_file else {}  # layers it pins
    elif args.config_file:
        cfg.targets = pruners.load_ratio_config(args.config_file)
    elif args.ratio is not None:
        cfg.targets = {"*": pruners.validate_target(args.ratio)}
    else:
        raise ValueError("give per-layer targets with --config_file FILE, one target with --ratio R, or --allocation FAMILY:TARGET")
    if args.nm_permute and cfg.method != "nm":
        raise ValueError(f"--nm_permute applies to --prune_type nm, not {cfg.method}")
    cfg.nm_permute, cfg.measure_latency = args.nm_permute, args.measure_latency
    schedule = args.schedule or ("regrow" if args.prune_freq or args.retrain_epoch else "oneshot")
    params: dict = {}
    if schedule == "regrow":
        params = {"prune_freq": args.prune_freq or 5, "retrain_epoch": args.retrain_epoch if args.retrain_epoch is not None else cfg.epochs // 2}
    elif schedule == "agp":
        params = {"start_epoch": args.agp_start, "end_epoch": args.agp_end if args.agp_end is not None else max(args.agp_start + 1, cfg.epochs // 2), "frequency": args.agp_freq}
    cfg.schedule, cfg.schedule_params = schedule, params
    return cfg


def trial_config(args: argparse.Namespace) -> RunConfig:
    """The config a sweep trial ran with (its newest checkpoint's), as a run of its own."""
    from pathlib import Path

    from raysweep.trial.checkpoint import CheckpointFolder, read_checkpoint

    given = Path(args.from_trial).expanduser().resolve()
    folder = given if CheckpointFolder(given).newest_path() else given.parent / "trials" / given.name
    newest = CheckpointFolder(folder).newest_path()
    if newest is None:
        raise ValueError(f"--from-trial {args.from_trial}: no trial checkpoint in {given} or {folder}; "
                         "give <sweep folder>/<trial id> (or <sweep folder>/trials/<trial id>)")  # fmt: skip
    cfg = RunConfig.from_dict({k: v for k, v in read_checkpoint(newest).config.items() if k in RunConfig.__dataclass_fields__})
    sweep = folder.parent.parent.name  # <sweep>/trials/<id>
    cfg.output, cfg.name, cfg.workers, cfg.print_freq = absolute(args.output), args.name or f"{sweep}-{folder.name}", args.workers, args.print_freq
    cfg.max_failures = args.max_failures
    return cfg


def main(argv: Optional[list[str]] = None) -> int:
    return main_with(build_parser(), config_from_prune_args, PROG, argv)


if __name__ == "__main__":
    raise SystemExit(main())
