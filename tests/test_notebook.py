"""notebooks/pareto_analysis.ipynb, executed headless with nbclient on the output of one real
tiny sweep: the sweep's folder, and a copy of it in a bucket (the session's S3 server,
tests/s3server.py) without its reports, which the notebook must rebuild there. Any cell error
fails the test."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from raysweep import search, storage
from helpers import tiny_space, write_space
from raysweep.results.pareto import knee_point
from raysweep.results.reports import finished_mask

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "pareto_analysis.ipynb"
REPORTS = ("trials.csv", "pareto.csv", "report.md", "report.html", "pareto.png")

SPACE = tiny_space(
    "nb", trials=2, seed=2,
    points=[{"method": "nm", "ratios": {"*": "m4n2", "features.0.weight": 0.0}}],
    # a latency objective: the notebook draws accuracy against latency beside accuracy-sparsity
    objectives={"accuracy": "max", "sparsity": "max", "latency_ms_b64": "min"},
)  # fmt: skip


@pytest.fixture(scope="module")
def experiments(request, ray_local, dense_digits, tmp_path_factory):
    """One sweep of 3 one-epoch trials (the session's dense model): its folder, and a copy of it
    at s3://raysweep/notebook/nb-copy without its reports (a folder where moto is not installed)."""
    root = tmp_path_factory.mktemp("notebook")
    space_file = write_space(root, {**SPACE, "dense": str(dense_digits / "final.pt")})
    assert search.main(["--space", str(space_file), "--storage", str(root / "results"), "-q"]) == 0
    first = root / "results" / "nb"
    moto = importlib.util.find_spec("moto") is not None
    second = request.getfixturevalue("s3").uri("notebook", "nb-copy") if moto else root / "results" / "nb-copy"
    storage.upload_tree(first, second)
    for name in REPORTS:
        storage.remove(storage.join(second, name))
    return first, second


def _kernel() -> str:
    """ipykernel's `python3`, registered for the user if this machine has no such kernel yet
    (jupyter_client runs it with this interpreter)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", "python3"], check=True)
    return "python3"


@pytest.fixture(scope="module")
def executed(experiments, tmp_path_factory):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    old = os.environ.get("RAYSWEEP_EXPERIMENTS")
    os.environ["RAYSWEEP_EXPERIMENTS"] = os.pathsep.join(str(e) for e in experiments)
    try:  # the kernel inherits this environment; it runs from the notebook's folder, as in Jupyter
        NotebookClient(nb, kernel_name=_kernel(), timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        if old is None:
            os.environ.pop("RAYSWEEP_EXPERIMENTS", None)
        else:
            os.environ["RAYSWEEP_EXPERIMENTS"] = old
    nbformat.write(nb, tmp_path_factory.mktemp("executed") / NOTEBOOK.name)  # kept for a look after a failure
    return nb


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if kind in o.get("data", {})]


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts.append(o.get("text", "") if o.get("output_type") == "stream" else o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_the_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'EXPERIMENTS = ["raysweep_results/digits-default"]' in params[0].source


def test_the_notebook_runs_and_draws(executed):
    # fronts per method (sparsity and latency views) x2, hypervolume curve, ratio heat maps x2,
    # the overlay of the two sweeps
    assert len(_outputs(executed, "image/png")) >= 8
    assert _outputs(executed, "text/html"), "tables (the front, the knee's configuration, hypervolumes)"


def test_the_notebook_prints_the_knee_point(executed, experiments):
    trials = pd.read_csv(experiments[0] / "trials.csv")
    done = trials[finished_mask(trials)]
    knee = knee_point(done, SPACE["objectives"])
    assert f"nb: knee point trial {knee['trial_id']}" in _text(executed)


def test_an_experiment_in_a_bucket_without_reports_is_rebuilt_there(executed, experiments):
    first, second = experiments
    for name in REPORTS:
        assert storage.is_file(storage.join(second, name)), name
    with storage.open_input(storage.join(second, "trials.csv")) as f:
        a, b = pd.read_csv(first / "trials.csv"), pd.read_csv(f)
    assert list(a["trial_id"]) == list(b["trial_id"])
    assert "nb-copy" in _text(executed)
