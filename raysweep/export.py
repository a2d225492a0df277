"""``python -m raysweep.export CHECKPOINT --out model.pt2``: a pruned checkpoint as a physically
smaller model file that plain torch loads (raysweep.speed.export)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from raysweep import storage
from raysweep.speed.export import ExportInputError, export_checkpoint


def _print_summary(s: dict[str, Any]) -> None:
    print(f"exported {s['model']} ({s['path']}) -> {s['out']} [{s['format']}]")
    load = "torch.export.load(path).module()" if s["format"] == "torch.export" else "torch.jit.load(path)"
    print(f"  load with plain torch: {load}")
    print(f"  parameters: {s['params_before']} -> {s['params_after']} "
          f"(masked model's non-zero parameters: {s['params_masked_remaining']})")
    print(f"  channels removed: {s['channels_removed']} of {s['channels_dead']} dead")
    for reason, n in sorted(s["kept_dead"].items()):
        print(f"    kept {n} dead channel(s): {reason}")
    if s["bias_maps"]:
        print(f"  {len(s['bias_maps'])} conv(s) carry a per-position bias map (--fold-borders): "
              f"the file runs at input size {tuple(s['input_size'])} only")
    print(f"  max |exported - masked| on a random batch: {s['max_abs_diff']:.3g}")
    if s["zeros_in_place"]:
        share = s["zeros_in_place"] / max(1, s["weights_in_place"])
        print(f"  {s['zeros_in_place']} zero weights ({share:.1%} of conv/linear weights) stay in place inside "
              "dense kernels: no speed gain from them")
    ss = s.get("semi_structured")
    if ss and ss["status"] == "skipped":
        print(f"  2:4 sparse kernels skipped: {ss['reason']}")
    elif ss:
        print(f"  2:4 sparse Linear ({', '.join(ss['layers'])}) on {ss['device']}, fp16 batch {ss['batch_size']}: "
              f"{ss['dense_ms']:.3f} ms dense -> {ss['sparse_ms']:.3f} ms sparse, speedup {ss['speedup']:.2f}x")
    if "latency" in s:
        d, e = s["latency"]["dense"], s["latency"]["exported"]
        print(f"  CPU latency ms (b1 / b64): dense {d['latency_ms_b1']:.3f} / {d['latency_ms_b64']:.3f}, "
              f"exported {e['latency_ms_b1']:.3f} / {e['latency_ms_b64']:.3f}, speedup b64 {s['speedup']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raysweep.export", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="final.pt / best.pt of a run, a run directory, a sweep trial's folder "
                        "(<sweep>/trials/<id>), a checkpoint, a trial id with --sweep, or a state dict (with --model); "
                        "a path or a storage URI (s3://bucket/prefix/<name>/trials/<id>)")
    parser.add_argument("--sweep", help="a sweep's folder or URI (<storage>/<name>): CHECKPOINT is then one of its trial ids")
    parser.add_argument("--out", required=True, help="output file (.pt2)")
    parser.add_argument("--model", help="registry model name (default: from the checkpoint's config)")
    parser.add_argument("--dataset", help="dataset name, picks the model family (default: from the config)")
    parser.add_argument("--no-compact", dest="do_compact", action="store_false", help="keep every channel (zeros in place)")
    parser.add_argument("--fold-borders", action="store_true",
                        help="also remove dead channels whose constant a padded conv sees differently at the borders "
                             "(per-position bias maps; the file then runs at the model's input size only)")
    parser.add_argument("--latency", action="store_true", help="time dense vs exported on CPU (batch 1 and 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for --latency (default 1)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if Path(args.out).is_dir():
        print(f"error: --out {args.out} is a directory; give a file name", file=sys.stderr)
        return 2
    checkpoint = str(storage.join(args.sweep, "trials", args.checkpoint)) if args.sweep else args.checkpoint
    try:
        if storage.is_uri(checkpoint):  # an endpoint that does not answer: one message, not minutes of retries
            try:
                storage.probe(str(storage.parent(checkpoint)), storage.storage_timeout())
            except ValueError as exc:
                raise ExportInputError(str(exc)) from None
        summary = export_checkpoint(checkpoint, args.out, model=args.model, dataset=args.dataset,
                                    do_compact=args.do_compact, fold_borders=args.fold_borders,
                                    latency=args.latency, threads=args.threads)
    except ExportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
