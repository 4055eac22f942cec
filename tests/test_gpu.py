"""The GPU path: scoring on dask_cuda.LocalCUDACluster equals the CPU path. Skips without a GPU.

The reference runs on plain CPU workers (the ``local`` kind hides the GPU from them). Float32 on
the GPU may use TF32 tensor cores for the convolutions (XLA's default), so scores agree to 1e-2,
not bit for bit; bfloat16 (mixed precision) to 5e-2. A stamp may change sides of the threshold
only where its CPU score is that close to it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from s2v_batch.pipeline.cluster import gpu_count

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(gpu_count() == 0, reason="no GPU visible (NVML finds no device)"),
]

TOLERANCE = {False: 1e-2, True: 5e-2}  # by mixed_precision


def test_cuda_cluster_scores_like_the_cpu(tmp_path, make_test_model):
    pytest.importorskip("dask_cuda")
    from s2v_batch.core.config import ScoreConfig
    from s2v_batch.pipeline.cluster import load_spec, open_client
    from s2v_batch.scoring.driver import score
    from s2v_batch.sim.simulator import simulate_stamps
    from s2v_batch.store import dataset as zstore

    model = make_test_model("gpu-test", "1", 0)
    batch = simulate_stamps(3000, np.random.default_rng(0))
    zstore.write_night(
        zstore.night_path(tmp_path / "store", "Y1", 20130901),
        np.nan_to_num(batch.pixels),
        np.arange(3000),
        batch.labels,
        season="Y1",
        night=20130901,
        shard_stamps=1024,
    )
    runs = {}
    with open_client(load_spec("cuda")) as client:
        info = client.run(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES"))
        assert all(v for v in info.values()), "each worker is pinned to a GPU"
        for mixed in (False, True):
            cfg = ScoreConfig(batch_size=1024, mixed_precision=mixed)
            score(
                tmp_path / "store",
                tmp_path / f"gpu-{mixed}",
                client,
                model_path=model,
                config=cfg,
                progress=False,
            )
            runs[mixed] = pd.read_parquet(tmp_path / f"gpu-{mixed}").sort_values("stamp_id")
    local = load_spec(None)
    local = dataclasses.replace(
        local, options={**local.options, "n_workers": 2, "threads_per_worker": 2}
    )
    with open_client(local) as client:
        devices = client.run(lambda: __import__("os").environ.get("JAX_PLATFORMS"))
        assert set(devices.values()) == {"cpu"}, "the reference runs on the CPU"
        score(
            tmp_path / "store",
            tmp_path / "cpu",
            client,
            model_path=model,
            config=ScoreConfig(batch_size=1024),
            progress=False,
        )
    c = pd.read_parquet(tmp_path / "cpu").sort_values("stamp_id")
    for mixed, g in runs.items():
        np.testing.assert_array_equal(g.stamp_id.to_numpy(), c.stamp_id.to_numpy())
        diff = np.abs(g.score.to_numpy() - c.score.to_numpy())
        print(f"mixed_precision={mixed}: largest |GPU - CPU| score difference {diff.max():.2e}")
        assert diff.max() <= TOLERANCE[mixed]
        flipped = g.is_candidate.to_numpy() != c.is_candidate.to_numpy()
        near = np.abs(c.score.to_numpy() - c.threshold.to_numpy()) <= TOLERANCE[mixed]
        assert not (flipped & ~near).any()
