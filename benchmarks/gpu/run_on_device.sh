#!/usr/bin/env bash
# The one command a GPU session runs on the device machine (issue 6), from the repository root,
# with .whl/ carried (made here first by benchmarks/gpu/fetch_wheels.sh):
#
#   run(command="bash benchmarks/gpu/run_on_device.sh", carry=[".whl"])
#
# 1. installs the wheels into /tmp/site (nothing can be downloaded there) and sets the
#    environment (Keras on JAX, no GPU memory preallocation, a JAX compilation cache shared by
#    the benchmark and its Dask workers);
# 2. prints nvidia-smi and the versions ($OUT/env.txt) and checks the imports of the GPU path;
# 3. runs the GPU test: pytest -m gpu tests/test_gpu.py ($OUT/pytest_gpu.log);
# 4. runs benchmarks/bench_gpu.py, tables to $OUT/bench_gpu.md, progress to $OUT/bench_gpu.log.
#
# Everything finishes within S2V_DEADLINE_S seconds (default 560; the device stops a command at
# 600): the test and the benchmark run under `timeout`, and the benchmark starts no end-to-end
# run past its budget. A failed test does not stop the benchmark; the exit status is non-zero
# when either failed (or the GPU test was skipped: on this machine it must run).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
start=$SECONDS
deadline=${S2V_DEADLINE_S:-560}
OUT=${OUT:-/tmp/s2v-gpu-out}
mkdir -p "$OUT"
left() { echo $(( deadline - (SECONDS - start) )); }

echo "== wheels -> /tmp/site"
shopt -s nullglob
wheels=(.whl/*.whl)
if [[ ${#wheels[@]} -eq 0 ]]; then
  echo "run_on_device.sh: no wheels in .whl/: run 'bash benchmarks/gpu/fetch_wheels.sh' first" \
       "and carry .whl" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "${wheels[@]}" || { echo "run_on_device.sh: pip install failed" >&2; exit 2; }
export PYTHONPATH=/tmp/site:$PWD
export KERAS_BACKEND=jax
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL=2
# Dask workers compile the same model call as the benchmark process: share the executables.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/s2v-jax-cache}
echo "installed ${#wheels[@]} wheels in $(( SECONDS - start )) s"

echo "== machine and versions"
{
  nvidia-smi || echo "nvidia-smi failed"
  nproc; free -g | head -2; df -h /tmp | tail -1
  python3 - <<'EOF'
import importlib.metadata as md, platform, sys
print("python", platform.python_version(), sys.executable)
for p in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "numpy", "keras", "zarr",
          "numcodecs", "dask", "distributed", "dask-cuda", "xarray", "pandas", "pyarrow",
          "cuda-core", "cuda-bindings", "nvidia-ml-py", "pytest"):
    try:
        print(f"{p} {md.version(p)}")
    except md.PackageNotFoundError:
        print(f"{p} -")
import jax
print("jax devices:", jax.devices())
EOF
} 2>&1 | tee "$OUT/env.txt"

echo "== imports of the GPU path"
imports_rc=0
python3 -c "
import sys
import s2v_batch.scoring.driver, s2v_batch.cli.main, distributed, dask_cuda, zarr, keras
heavy = [m for m in ('prefect', 'astropy', 'tensorflow') if m in sys.modules]
print('ok: keras', keras.__version__, keras.backend.backend(), '| zarr', zarr.__version__,
      '| dask_cuda', dask_cuda.__version__, '| not imported: prefect, astropy, tensorflow' if not heavy else heavy)
" 2>&1 | tee "$OUT/imports.txt" || imports_rc=1

echo "== GPU test ($(left) s left)"
t=$(( $(left) > 400 ? 200 : $(left) / 3 ))
timeout -k 10 "$t" python3 -m pytest -q -rs -m gpu tests/test_gpu.py -p no:cacheprovider \
  2>&1 | tee "$OUT/pytest_gpu.log"
test_rc=${PIPESTATUS[0]}
if [[ $test_rc -eq 0 ]] && grep -qE '[0-9]+ skipped' "$OUT/pytest_gpu.log" \
   && ! grep -qE '[0-9]+ passed' "$OUT/pytest_gpu.log"; then
  echo "run_on_device.sh: the GPU test was skipped on a GPU machine: counted as a failure"
  test_rc=3
fi
echo "GPU test exit status $test_rc ($(( SECONDS - start )) s so far)"

echo "== benchmark ($(left) s left)"
bench_t=$(( $(left) - 5 ))
budget=$(( bench_t - 110 > 60 ? bench_t - 110 : 60 ))
timeout -k 10 "$bench_t" python3 benchmarks/bench_gpu.py --budget-s "$budget" "$@" \
  2> >(tee "$OUT/bench_gpu.log" >&2) | tee "$OUT/bench_gpu.md"
bench_rc=${PIPESTATUS[0]}
echo "benchmark exit status $bench_rc; imports $imports_rc, GPU test $test_rc;" \
     "$(( SECONDS - start )) s in all"
[[ $test_rc -eq 0 && $bench_rc -eq 0 && $imports_rc -eq 0 ]]
