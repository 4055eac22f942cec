#!/usr/bin/env bash
# Download the wheels of benchmarks/gpu/wheels.txt into .whl/ for the GPU machine (CPython 3.12,
# manylinux x86_64), with no dependencies resolved: the list is complete on its own. Run from the
# repository root, where PyPI is reachable; a GPU session then carries .whl/ to the device:
#
#   bash benchmarks/gpu/fetch_wheels.sh                  # -> .whl/, cp312
#   bash benchmarks/gpu/fetch_wheels.sh --python-version 3.11 --dest /tmp/whl311   # CPU dry run
#
# Prints the total size; fails when it exceeds 50 MiB (the whole carried tree is limited to 64 MiB).
set -euo pipefail

dest=.whl
pyver=3.12
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dest) dest="$2"; shift 2 ;;
    --python-version) pyver="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "fetch_wheels.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
list="$here/wheels.txt"
mapfile -t reqs < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$')
[[ ${#reqs[@]} -gt 0 ]] || { echo "fetch_wheels.sh: $list lists no wheels" >&2; exit 1; }

mkdir -p "$dest"
# One version of each package: drop wheels left from another list or another Python.
find "$dest" -maxdepth 1 -type f -name '*.whl' -delete

python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$dest" "${reqs[@]}" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)

got=$(find "$dest" -maxdepth 1 -type f -name '*.whl' | wc -l)
if [[ "$got" -ne ${#reqs[@]} ]]; then
  echo "fetch_wheels.sh: expected ${#reqs[@]} wheels in $dest, found $got" >&2
  exit 1
fi
bytes=$(find "$dest" -maxdepth 1 -type f -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
mib=$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}')
echo "fetch_wheels.sh: ${#reqs[@]} wheels for cp${pyver/./} in $dest, ${mib} MiB in total"
if (( bytes > 50 * 1048576 )); then
  echo "fetch_wheels.sh: over 50 MiB: the GPU session can carry at most 64 MiB with the repository" >&2
  exit 1
fi
