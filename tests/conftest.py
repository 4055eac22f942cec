"""Shared, generic test fixtures. Add yours; keep them generic and cheap until used (lazy imports)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

# Prefect reads its settings once, when first imported: give every test session a throwaway
# Prefect home (database, logs, profiles) and no analytics, before any test module imports it.
_PREFECT_HOME = tempfile.mkdtemp(prefix="s2v-tests-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

#: Set to 1 by CI (.ci/run): a test that needs a real service it cannot have here (root, a
#: mount, SLURM, Chromium) fails instead of skipping. A GPU is never required.
REQUIRE_REAL = "S2V_REQUIRE_REAL"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test for lack of a real service, saying why; under ``S2V_REQUIRE_REAL=1`` (CI)
    fail it instead, with the same reason: CI must not pass by skipping what it is there to run.

    Use it from a test or fixture (``from conftest import skip_or_fail``) where a real service
    (root, ``mount``, SLURM, Chromium) is missing; not for a GPU, which no machine must have.
    """
    if os.environ.get(REQUIRE_REAL) == "1":
        pytest.fail(f"{reason} ({REQUIRE_REAL}=1: this test may not skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's test harness: one temporary local server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A real ``distributed`` client on a LocalCluster bound to 127.0.0.1 (one 2-thread worker).

    Built with :func:`s2v_batch.pipeline.cluster.open_client`, so workers get the project's thread settings.
    """
    from s2v_batch.pipeline.cluster import ClusterSpec, open_client

    spec = ClusterSpec(
        kind="local",
        options={"n_workers": 1, "threads_per_worker": 2, "dashboard_address": "127.0.0.1:0"},
        name="tests",
    )
    with open_client(spec) as client:
        yield client


@pytest.fixture(scope="session")
def make_test_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory of small untrained model artifacts: ``make_test_model(name, version, seed)``.

    Returns the ``.keras`` path (its card beside it); each distinct call is built once a session.
    Different seeds give different weights, so a different sha256.
    """
    root = tmp_path_factory.mktemp("test-models")
    made: dict[tuple[str, str, int], Path] = {}

    def make(name: str = "test-model", version: str = "1", seed: int = 0) -> Path:
        key = (name, version, seed)
        if key not in made:
            import keras

            from s2v_batch.model import ModelCard, build_model, save_artifact

            keras.utils.set_random_seed(seed)
            card = ModelCard(
                name=name,
                version=version,
                architecture="vgg6",
                threshold=0.5,
                thresholds={"bfloat16": 0.5},  # scoring at bfloat16 takes its own threshold
                target_recall=0.99,
                training_data={"description": "untrained test model", "simulated": True},
            )
            made[key] = save_artifact(build_model("vgg6"), card, root / f"{name}-{version}-{seed}")
        return made[key]

    return make


@pytest.fixture(scope="module")
def two_worker_client() -> Iterator[Any]:
    """A real client on a LocalCluster of two single-threaded worker processes (127.0.0.1).

    Module-scoped: tests that kill a worker leave the next module a fresh cluster.
    """
    from distributed import Client, LocalCluster

    from s2v_batch.pipeline.cluster import cpu_worker_env

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=":0",
            processes=True,
            env=cpu_worker_env(1),
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def scanned_season(tmp_path_factory: pytest.TempPathFactory, dask_client) -> dict[str, Any]:
    """Two simulated nights stored and scored by the shipped model, for the scanning tests
    (``store``, ``scores``, ``season`` and ``truth``: stamp_id -> simulated label)."""
    from scan_data import build_scanned_season

    return build_scanned_season(tmp_path_factory.mktemp("scanned"), dask_client)
