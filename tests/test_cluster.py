"""The Dask cluster specs in cluster/: each loads, and each starts (or fails) as it says."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2v_batch.pipeline import cluster as cl
from s2v_batch.pipeline.cluster import (
    KINDS,
    ClusterError,
    ClusterSpec,
    gpu_count,
    load_spec,
    open_client,
)

SPECS = Path(__file__).resolve().parent.parent / "cluster"


@pytest.mark.parametrize(
    ("name", "kind"),
    [("local", "local"), ("cuda", "cuda"), ("slurm", "slurm"), ("existing", "address")],
)
def test_each_spec_loads(name: str, kind: str) -> None:
    by_path = load_spec(SPECS / f"{name}.yaml")
    by_name = load_spec(name)  # the name of a spec in cluster/, as `--cluster slurm`
    assert by_path.kind == by_name.kind == kind in KINDS
    assert by_path.options == by_name.options


@given(cores=st.integers(1, 512))
def test_default_local_layouts_fit_the_cores(cores: int) -> None:
    """Ingest (and anything else): a single-threaded worker per core. Scoring: threads of one
    process share its TensorFlow, at most SCORE_THREADS_PER_WORKER a worker, never more
    threads than cores and fewer than a worker's worth of cores left idle."""
    real = cl.os.cpu_count
    cl.os.cpu_count = lambda: cores
    try:
        any_ = load_spec(None).options
        score = load_spec(None, "score").options
    finally:
        cl.os.cpu_count = real
    assert (any_["n_workers"], any_["threads_per_worker"]) == (cores, 1)
    n, t = score["n_workers"], score["threads_per_worker"]
    assert 1 <= t <= cl.SCORE_THREADS_PER_WORKER
    assert cores - n < n * t <= cores
    if cores <= cl.SCORE_THREADS_PER_WORKER:
        assert (n, t) == (1, cores)


def test_default_local_layout_rejects_unknown_work() -> None:
    with pytest.raises(ValueError, match="work must be"):
        load_spec(None, "train")


def test_every_service_of_the_local_specs_binds_to_loopback() -> None:
    for name in ("local", "cuda"):
        opts = load_spec(name).options
        assert opts["host"] == "127.0.0.1"
        assert opts["dashboard_address"].startswith("127.0.0.1:")
    assert load_spec("existing").options["address"].startswith("tcp://127.0.0.1:")


def test_local_spec_starts_a_real_cluster_on_loopback() -> None:
    spec = load_spec("local")
    # The spec's own settings, smaller: one worker and a free dashboard port.
    opts = {**spec.options, "n_workers": 1, "dashboard_address": "127.0.0.1:0"}
    with open_client(dataclasses.replace(spec, options=opts)) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 1 and all(a.startswith("tcp://127.0.0.1:") for a in workers)
        assert client.submit(sum, [1, 2, 3]).result() == 6
        # Thread settings reach the worker's environment before TensorFlow could start.
        env = client.run(lambda: __import__("os").environ.get("TF_NUM_INTRAOP_THREADS"))
        assert set(env.values()) == {"1"}
        # Plain CPU workers never open a GPU, even on a GPU host (that is the cuda kind's job).
        env = client.run(
            lambda: [
                __import__("os").environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS")
            ]
        )
        assert list(env.values()) == [["", "cpu"]]
        cluster = client.cluster
    assert cluster.status.name == "closed"


def test_existing_spec_attaches_and_leaves_the_cluster_running(dask_client: Any) -> None:
    spec = load_spec("existing")
    live = dataclasses.replace(spec, options={"address": dask_client.scheduler.address})
    with open_client(live) as client:
        assert client.submit(lambda x: x * 2, 21).result() == 42
    assert dask_client.submit(lambda: "still up").result() == "still up"


def test_cuda_spec_without_gpu_raises_a_clear_error() -> None:
    if gpu_count() > 0:
        pytest.skip("this machine has a GPU: the cuda spec would start")
    with pytest.raises(ClusterError, match="needs GPUs but none is visible"):
        with open_client("cuda"):
            pass


def test_cuda_spec_sets_gpu_memory_growth() -> None:
    env = load_spec("cuda").worker_env
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_slurm_spec_renders_its_job_script_without_slurm(tmp_path: Path, monkeypatch) -> None:
    from s2v_batch.pipeline.cluster import make_cluster

    monkeypatch.chdir(tmp_path)  # log_directory is relative: keep it out of the repository
    spec = load_spec("slurm")
    opts = dict(spec.options)
    # Here the scheduler binds to loopback (no ib0 on this machine) and the workers' TLS files
    # go to a temporary folder; everything else is the spec as shipped.
    opts["scheduler_options"] = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    opts["shared_temp_directory"] = str(tmp_path)
    cluster = make_cluster(dataclasses.replace(spec, options=opts))
    try:
        script = cluster.job_script()
        address = cluster.scheduler_address
    finally:
        cluster.close()
    lines = script.splitlines()
    assert "#SBATCH --gres=gpu:1" in lines
    assert "#SBATCH -t 01:00:00" in lines
    assert "#SBATCH -p gpu" in lines
    assert any(line.startswith("#SBATCH --mem=") for line in lines)
    assert "export TF_FORCE_GPU_ALLOW_GROWTH=true" in lines
    assert "export XLA_PYTHON_CLIENT_PREALLOCATE=false" in lines
    (worker,) = [line for line in lines if "distributed.cli.dask_worker" in line]
    assert "--lifetime 55m --lifetime-stagger 4m" in worker
    assert "--local-directory ${TMPDIR:-/tmp}" in worker
    assert "--dashboard-address 127.0.0.1:0" in worker  # the worker's HTTP port: node loopback
    assert "--interface ib0" in worker
    # TLS: the scheduler speaks tls:// and each worker is given the temporary credentials.
    assert address.startswith("tls://127.0.0.1:")
    assert f"{address} " in worker and "--tls-ca-file" in worker and "--tls-key" in worker
    assert spec.scale == {"adapt": {"minimum_jobs": 0, "maximum_jobs": 16}}


def test_bad_specs_raise_cluster_errors(tmp_path: Path) -> None:
    cases = {
        "kind: kubernetes\n": "unknown cluster kind",
        "kind: address\n": "needs options.address",
        "kind: local\nworkers: 3\n": "unknown key",
        "- not\n- a mapping\n": "must hold a mapping",
        "kind: [local\n": "not valid YAML",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text)
        with pytest.raises(ClusterError, match=message):
            load_spec(path)
    with pytest.raises(ClusterError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(ClusterError):
        ClusterSpec(kind="cuda-typo")


@pytest.mark.parametrize("ref", ["local", "local.yaml", "cluster/local.yaml", "cluster/local"])
def test_a_shipped_spec_is_found_by_name_from_any_folder(ref, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # outside the checkout: `cluster/local.yaml` is not a file here
    spec = load_spec(ref)
    assert spec.kind == "local" and spec.options == load_spec(SPECS / "local.yaml").options


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "local.yaml").write_text(
        "kind: address\noptions: {address: tcp://127.0.0.1:9999}\n"
    )
    assert load_spec("cluster/local.yaml").kind == "address"  # the user's edited copy
    assert load_spec("local").kind == "local"  # the bare name: the shipped one


def test_an_unknown_spec_is_one_line_listing_the_shipped_names(tmp_path, monkeypatch) -> None:
    from s2v_batch.core import resources

    monkeypatch.chdir(tmp_path)
    shipped = sorted(resources.shipped(resources.CLUSTER_SPECS))
    assert shipped == sorted(p.stem for p in SPECS.glob("*.yaml"))
    for ref in ("nope", "cluster/nope.yaml", str(tmp_path / "local.yaml"), "elsewhere/local.yaml"):
        with pytest.raises(ClusterError) as err:
            load_spec(ref)
        msg = str(err.value)
        assert "\n" not in msg and f"{ref!r} does not exist" in msg
        assert f"(shipped: {', '.join(shipped)})" in msg
