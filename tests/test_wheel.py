"""Installed as users install it: a wheel built from the repository, in a fresh virtual environment.

The wheel is built from a clean copy of the repository (setuptools would otherwise reuse a stale
``build/`` folder), installed non-editable with its dependencies from the package index pip is
configured with, and used from a folder outside the checkout: the named cluster specs and the
shipped configs must be found there, and the flows import as ``s2v_flows`` (no top-level ``flows``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NIGHT = 20131005
#: The first test also waits for the venv install: minutes, more on a busy machine.
INSTALL_TIMEOUT = 2400
#: Not copied into the build: environments, build outputs, caches, outputs of local runs.
IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "demo-output",
    ".bench",
    ".whl",
)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A fresh venv with the wheel installed; a work folder outside the checkout; its env.

    The venv (about a GB: TensorFlow) is removed at the end.
    """
    root = tmp_path_factory.mktemp("wheel")
    assert REPO not in root.parents
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(
        PREFECT_HOME=str(root / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    times = {}
    src, venv = root / "src", root / "venv"
    try:
        t0 = time.perf_counter()
        shutil.copytree(REPO, src, ignore=IGNORED)
        dist = root / "dist"
        _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
            root,
            env,
            600,
        )
        (wheel,) = dist.glob("s2v_batch-*.whl")
        times["wheel_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _run([sys.executable, "-m", "venv", str(venv)], root, env, 300)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)]
        _run(pip, root, env, 1800)
        times["venv_install_s"] = time.perf_counter() - t0
        work = root / "work"
        work.mkdir()
        print(f"\nwheel {wheel.name}: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
        yield {"venv": venv, "work": work, "env": env, "wheel": wheel, "times": times}
    finally:
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)


def _s2v(installed: dict, *args: str, timeout: float = 900) -> str:
    return _run(
        [str(installed["venv"] / "bin" / "s2v"), *args],
        installed["work"],
        installed["env"],
        timeout,
    )


def _py(installed: dict, code: str) -> str:
    return _run(
        [str(installed["venv"] / "bin" / "python"), "-c", code],
        installed["work"],
        installed["env"],
        300,
    )


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_the_wheel_ships_specs_configs_and_the_flows_under_their_own_names(installed):
    names = json.loads(
        _py(
            installed,
            "import json, s2v_batch, s2v_flows; from s2v_batch.core import resources as r; "
            "print(json.dumps({'specs': sorted(r.shipped(r.CLUSTER_SPECS)), "
            "'configs': sorted(r.shipped(r.PIPELINE_CONFIGS)), "
            "'lib': s2v_batch.__file__, 'flows': s2v_flows.__file__}))",
        )
    )
    # Every spec and config of the repository is shipped, and found in site-packages, not here.
    assert names["specs"] == sorted(p.stem for p in (REPO / "cluster").glob("*.yaml"))
    assert names["configs"] == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert {"local", "slurm"} <= set(names["specs"]) and {"gpu", "nightly"} <= set(names["configs"])
    site = Path(names["lib"]).parent.parent
    assert site.name == "site-packages" and str(installed["venv"]) in str(site)
    assert Path(names["flows"]).parent == site / "s2v_flows"
    # The flows do not claim the generic top-level name `flows`.
    assert not (site / "flows").exists()
    _py(installed, "import importlib.util as u; assert u.find_spec('flows') is None")
    dist_info = next(site.glob("s2v_batch-*.dist-info"))
    assert set((dist_info / "top_level.txt").read_text().split()) == {"s2v_batch", "s2v_flows"}


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_s2v_nightly_and_score_run_from_the_wheel_outside_the_checkout(installed):
    import pandas as pd

    work = installed["work"]
    _s2v(
        installed,
        *("simulate", "raw", "--season", "Y1", "--nights", "1", "--stamps-per-night", "300"),
        *("--format", "gif", "--seed", "5", "--first-night", str(NIGHT), "--no-progress"),
    )
    out = _s2v(
        installed,
        *("nightly", "--raw", "raw", "--night", str(NIGHT), "--store", "store"),
        *("--out", "scores", "--reports", "reports", "--cluster", "local"),
        *("--config", "configs/nightly.yaml", "--no-progress"),
    )
    assert f"nightly Y1/{NIGHT}" in out
    assert (work / "store" / "Y1" / f"{NIGHT}.zarr").is_dir()
    assert (work / "reports" / "index.html").is_file()
    nightly = pd.read_parquet(work / "scores", filters=[("night", "==", NIGHT)])
    assert len(nightly) == 300

    # The GPU settings by name, on the shipped `local` spec, over the store the nightly run wrote.
    out = _s2v(
        installed,
        *("score", "store", "--out", "scores-gpu-config", "--cluster", "local"),
        *("--config", "configs/gpu.yaml", "--no-progress"),
    )
    scored = pd.read_parquet(work / "scores-gpu-config")
    assert len(scored) == 300 and scored["score"].notna().all()
    assert sorted(scored.stamp_id) == sorted(nightly.stamp_id)

    # An unknown name: one line that lists the shipped specs, exit status 2, no traceback.
    proc = subprocess.run(
        [str(installed["venv"] / "bin" / "s2v"), "score", "store", "--out", "x"]
        + ["--cluster", "no-such-spec"],
        cwd=work,
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("s2v score: error: cluster spec 'no-such-spec' does not exist")
    assert "local" in line and "slurm" in line


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_the_wheel_ships_the_scanning_page(installed):
    """`s2v scan` serves its page, script and style from package data: they are in the wheel."""
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for f in ("templates/scan.html", "static/scan.js", "static/scan.css"):
        assert f"s2v_batch/scan/{f}" in names, f
