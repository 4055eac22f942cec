"""The plain single-process loop issue 13 compares ``s2v score`` with: what a user could write in
an hour. Zarr slices of 4,096 stamps read by a background thread, a compiled ``tf.function``
call per 512 stamps, a pyarrow ``ParquetWriter``. TensorFlow's defaults (all cores), oneDNN on;
the model as saved (BatchNorm not folded, as a user loads it).

    python benchmarks/plain_loop.py NIGHT.zarr MODEL.keras OUT.parquet [bfloat16]

With ``bfloat16`` (issue 27), the loop a user would write for it: the loaded model cloned with
Keras' ``mixed_bfloat16`` policy on every layer but the normalisation and the output (which the
architecture keeps float32), nothing else changed.

Prints one JSON line: the stamps, the seconds from the start of the process to the first block
written and to the end, and the rate after the first block.
"""

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

T0 = time.perf_counter()
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The model's own layers must be registered before it loads; importing them first also brings
# in Keras the way the package does (without the JAX import TensorFlow makes where JAX is
# installed), so this loop pays no more start-up than s2v's workers.
import s2v_batch.model.layers  # noqa: E402, F401, I001
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import tensorflow as tf  # noqa: E402
import zarr  # noqa: E402

night, model_path, out = sys.argv[1:4]
BLOCK, BATCH = 4096, 512

model = keras.saving.load_model(model_path, compile=False)
if sys.argv[4:] == ["bfloat16"]:

    def _bf16(layer):
        config = layer.get_config()
        if layer.name not in ("normalize", "score", "guard"):
            config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    bf16 = keras.models.clone_model(model, clone_function=_bf16)
    bf16.set_weights(model.get_weights())
    model = bf16
group = zarr.open_group(night, mode="r")
stamps, stamp_ids = group["stamps"], group["stamp_id"][:]
n = stamps.shape[0]
call = tf.function(
    lambda x: model(x, training=False),
    input_signature=[tf.TensorSpec((BATCH, *stamps.shape[1:]), stamps.dtype)],
)


def score(x: np.ndarray) -> np.ndarray:
    out = np.empty(len(x), np.float32)
    for i in range(0, len(x), BATCH):
        batch = x[i : i + BATCH]
        k = len(batch)
        if k < BATCH:  # pad the tail: one compiled shape
            batch = np.concatenate([batch, np.zeros((BATCH - k, *x.shape[1:]), x.dtype)])
        out[i : i + k] = call(batch).numpy().reshape(-1)[:k]
    return out


schema = pa.schema([("stamp_id", pa.int64()), ("score", pa.float32())])
starts = list(range(0, n, BLOCK))
first = None
with pq.ParquetWriter(out, schema) as writer, ThreadPoolExecutor(1) as pool:
    nxt = pool.submit(lambda a: stamps[a : a + BLOCK], starts[0])
    for j, a in enumerate(starts):
        x = nxt.result()
        if j + 1 < len(starts):
            nxt = pool.submit(lambda a: stamps[a : a + BLOCK], starts[j + 1])
        s = score(x)
        writer.write_table(pa.table({"stamp_id": stamp_ids[a : a + len(x)], "score": s}, schema))
        if first is None:
            first = time.perf_counter() - T0
end = time.perf_counter() - T0
steady = (n - min(BLOCK, n)) / (end - first) if end > first and n > BLOCK else float("nan")
print(json.dumps({"n": n, "first_block_s": first, "seconds": end, "steady_rate": steady}))
