"""The GPU path: scoring on dask_cuda.LocalCUDACluster equals the CPU path. Skips without a GPU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from s2v_batch.cluster import gpu_count

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(gpu_count() == 0, reason="no GPU visible (NVML finds no device)"),
]


def test_cuda_cluster_scores_like_the_cpu(tmp_path, make_test_model):
    pytest.importorskip("dask_cuda")
    from s2v_batch import store as zstore
    from s2v_batch.cluster import load_spec, open_client
    from s2v_batch.config import ScoreConfig
    from s2v_batch.scoring import score
    from s2v_batch.simulator import simulate_stamps

    model = make_test_model("gpu-test", "1", 0)
    batch = simulate_stamps(3000, np.random.default_rng(0))
    zstore.write_night(zstore.night_path(tmp_path / "store", "Y1", 20130901), np.nan_to_num(batch.pixels),
                       np.arange(3000), batch.labels, season="Y1", night=20130901, shard_stamps=1024)
    cfg = ScoreConfig(batch_size=1024)
    with open_client(load_spec("cuda")) as client:
        info = client.run(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES"))
        assert all(v for v in info.values()), "each worker is pinned to a GPU"
        score(tmp_path / "store", tmp_path / "gpu", client, model_path=model, config=cfg, progress=False)
    with open_client() as client:
        score(tmp_path / "store", tmp_path / "cpu", client, model_path=model, config=cfg, progress=False)
    g = pd.read_parquet(tmp_path / "gpu").sort_values("stamp_id")
    c = pd.read_parquet(tmp_path / "cpu").sort_values("stamp_id")
    np.testing.assert_array_equal(g.stamp_id.to_numpy(), c.stamp_id.to_numpy())
    np.testing.assert_allclose(g.score.to_numpy(), c.score.to_numpy(), atol=1e-4)
