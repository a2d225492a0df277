"""Replay what a new user meets when things go wrong, and print what each case ends with.

Each case runs the real command in a fresh folder (its own storage, its own working directory)
and the table shows: the case, the exit code, the seconds it took, the message it ended with
(the last line on stderr) and what it left behind in that folder. The last row counts the lines
the default sweep prints on a non-terminal stdout.

    python benchmarks/replay_reliability.py [--only NAME ...] [--skip-default-sweep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

SEARCH = [sys.executable, "-m", "raysweep.search"]
PRUNE = [sys.executable, "-m", "raysweep.prune"]
TRAIN = [sys.executable, "-m", "raysweep.train"]


@dataclass
class Outcome:
    case: str
    code: object
    seconds: float
    message: str
    left: str


def _run(cmd: list[str], cwd: Path, env: Optional[dict] = None, stop: Optional[Callable[[subprocess.Popen], None]] = None,
         timeout: float = 900) -> tuple[int, str, str, float]:  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if stop is not None:
        stop(proc)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err, time.perf_counter() - start


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Token authentication")]
    return (lines[-1] if lines else "")[:150]


def _left(folder: Path, ignore: tuple[str, ...] = ()) -> str:
    found = sorted(str(p.relative_to(folder)) for p in folder.iterdir() if p.name not in ignore)
    return ", ".join(found) if found else "nothing"


def _when(path_glob: str, folder: Path, sig: int, timeout: float = 600) -> Callable[[subprocess.Popen], None]:
    """Send ``sig`` once a file matching ``path_glob`` exists under ``folder``."""

    def stop(proc: subprocess.Popen) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not list(folder.glob(path_glob)):
            time.sleep(0.3)
        if proc.poll() is None:
            proc.send_signal(sig)

    return stop


def _dense(folder: Path) -> Path:
    import torch

    from raysweep.models import create_model

    torch.manual_seed(0)
    torch.save(create_model("digits_cnn").state_dict(), folder / "w.pt")
    return folder / "w.pt"


def case_resume(d: Path) -> list[Outcome]:
    first = ["--space", "digits_layerwise", "--set", "trials=30", "--name", "lw", "--storage", "s"]
    code1, _, err1, t1 = _run(SEARCH + first, d, stop=_when("s/lw/trials/*/checkpoint_epoch0002", d, signal.SIGINT))
    code2, out2, err2, t2 = _run(SEARCH + ["--resume", "--name", "lw", "--storage", "s"], d)
    summary = next((ln for ln in out2.splitlines() if ln.startswith("35 trials")), _last_line(out2))
    return [Outcome("1 Ctrl-C a digits_layerwise sweep", code1, t1, _last_line(err1), _left(d / "s" / "lw", ("pool",))),
            Outcome("1 --resume --name lw (nothing else)", code2, t2, summary or _last_line(err2), "")]  # fmt: skip


def case_relative_weights(d: Path) -> list[Outcome]:
    _dense(d)
    code, out, err, t = _run(PRUNE + ["--prune_type", "nm", "--ratio", "m4n2", "--nm_permute", "--weight_file", "w.pt",
                                      "--epochs", "1", "-q"], d)  # fmt: skip
    return [Outcome("2 prune --weight_file w.pt (relative)", code, t, _last_line(err) or _last_line(out), _left(d, ("w.pt",)))]


def case_nothing_finishes(d: Path) -> list[Outcome]:
    code1, _, err1, t1 = _run(SEARCH + ["--set", "lr=.inf", "--set", "trials=2", "--set", "points=[]", "--storage", "s"], d)
    left1 = _left(d) if any(d.iterdir()) else "nothing"
    code2, _, err2, t2 = _run(SEARCH + ["--set", "lr=1e12", "--set", "trials=2", "--set", "points=[]", "--storage", "s"], d)
    return [Outcome("3 --set lr=.inf", code1, t1, _last_line(err1), left1),
            Outcome("3 --set lr=1e12 (every trial diverges)", code2, t2, _last_line(err2), _left(d / "s" / "digits-default"))]


def case_storage_fails(d: Path) -> list[Outcome]:
    exp = d / "s" / "ro"

    def break_storage(proc: subprocess.Popen) -> None:
        _when("s/ro/trials/*/checkpoint_epoch0002", d, 0)(proc)  # signal 0: only wait
        (exp / "trials").rename(exp / "trials.away")
        (exp / "trials").write_text("not a folder")

    args = ["--set", "trials=8", "--set", "points=[]", "--name", "ro", "--storage", "s"]
    code1, _, err1, t1 = _run(SEARCH + args, d, stop=break_storage)
    (exp / "trials").unlink()
    (exp / "trials.away").rename(exp / "trials")
    code2, out2, _, t2 = _run(SEARCH + ["--resume", "--name", "ro", "--storage", "s"], d)
    summary = next((ln for ln in out2.splitlines() if " trials: " in ln), "")
    return [Outcome("4 storage fails mid-sweep", code1, t1, _last_line(err1), f"{err1.count('Traceback')} tracebacks"),
            Outcome("4 --resume once it is back", code2, t2, summary, "")]


def case_dead_address(d: Path) -> list[Outcome]:
    code, _, err, t = _run(SEARCH + ["--address", "127.0.0.1:6399", "--name", "addr", "--storage", "s"], d)
    return [Outcome("5 --address 127.0.0.1:6399 (nothing listens)", code, t, _last_line(err), _left(d) if any(d.iterdir()) else "nothing")]


def case_names(d: Path) -> list[Outcome]:
    rows = []
    for name in ("../../x", "team/a"):
        code, _, err, t = _run(SEARCH + ["--name", name, "--storage", "s"], d)
        rows.append(Outcome(f"6 --name {name}", code, t, _last_line(err), _left(d) if any(d.iterdir()) else "nothing"))
    return rows


def case_sigterm(d: Path) -> list[Outcome]:
    code, _, err, t = _run(SEARCH + ["--name", "term", "--storage", "s"], d, stop=_when("s/term/trials/*/checkpoint_epoch0002", d, signal.SIGTERM))
    return [Outcome("7 SIGTERM mid-sweep", code, t, _last_line(err), _left(d / "s" / "term", ("pool",)))]


def case_bad_storage(d: Path) -> list[Outcome]:
    (d / "file").write_text("x")
    rows = []
    for storage in ("file", "/proc/raysweep-results"):
        code, _, err, t = _run(SEARCH + ["--storage", storage], d)
        rows.append(Outcome(f"8 --storage {storage}", code, t, _last_line(err), _left(d, ("file",)) if len(list(d.iterdir())) > 1 else "nothing"))
    return rows


def case_corrupt(d: Path) -> list[Outcome]:
    (d / "bad.pt").write_bytes(b"\x80\x02garbage")
    code, _, err, t = _run(PRUNE + ["--prune_type", "irregular", "--ratio", "0.5", "--weight_file", "bad.pt"], d)
    return [Outcome("9 prune --weight_file corrupt.pt", code, t, _last_line(err), _left(d, ("bad.pt",)))]


def case_workers(d: Path) -> list[Outcome]:
    code, _, err, t = _run(TRAIN + ["--workers", "8"], d)
    return [Outcome("10 train --workers 8 (2 CPUs)", code, t, _last_line(err), _left(d) if any(d.iterdir()) else "nothing")]


def case_footguns(d: Path) -> list[Outcome]:
    rows = []
    for label, args in [("prune, no --weight_file", ["--prune_type", "irregular", "--ratio", "0.5"]),
                        ("filter on the output layer", ["--prune_type", "filter", "--ratio", "0.5"]),
                        ("nm m3n1 fits no layer", ["--prune_type", "nm", "--ratio", "m3n1"])]:  # fmt: skip
        code, _, err, t = _run(PRUNE + args + ["--epochs", "1", "--workers", "64"], d)  # stops before Ray
        warning = next((ln for ln in err.splitlines() if ln.startswith("WARNING")), "(no warning)")
        rows.append(Outcome(f"11 {label}", code, t, warning[:150], ""))
    code, _, err, t = _run(SEARCH + ["--set", "trials=1000000000", "--storage", "s"], d)
    rows.append(Outcome("11 --set trials=1000000000", code, t, _last_line(err), _left(d) if any(d.iterdir()) else "nothing"))
    return rows


def case_console(d: Path) -> list[Outcome]:
    code, out, err, t = _run(SEARCH + ["--storage", "s"], d)
    lines = len(out.splitlines()) + len(err.splitlines())
    return [Outcome("console: default sweep, stdout+stderr not a terminal", code, t, f"{lines} lines ({len(out.splitlines())} stdout)", "")]


CASES = {
    "resume": case_resume, "relative": case_relative_weights, "nothing": case_nothing_finishes,
    "storage": case_storage_fails, "address": case_dead_address, "names": case_names, "sigterm": case_sigterm,
    "bad_storage": case_bad_storage, "corrupt": case_corrupt, "workers": case_workers, "footguns": case_footguns,
    "console": case_console,
}  # fmt: skip


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=list(CASES), help="run only these cases")
    args = p.parse_args(argv)
    rows: list[Outcome] = []
    for name in args.only or list(CASES):
        folder = Path(tempfile.mkdtemp(prefix=f"replay-{name}-"))
        try:
            rows += CASES[name](folder)
        except Exception as exc:  # noqa: BLE001 -- one broken case must not hide the others
            rows.append(Outcome(name, "crashed", 0.0, f"{type(exc).__name__}: {exc}"[:150], ""))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(f"  ran {name}", flush=True)
    print("\n| case | exit | s | message | left behind |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.case} | {r.code} | {r.seconds:.1f} | {r.message.replace('|', '/')} | {r.left} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
