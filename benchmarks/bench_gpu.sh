#!/usr/bin/env bash
# The GPU checks in one run (a lent GPU machine has minutes, not hours): the GPU parity tests, then
# `zoo bench --device gpu` into benchmarks/results/bench-gpu/. Test it on CPU first: DEVICE=cpu OUT=/tmp/b bash benchmarks/bench_gpu.sh
set -euo pipefail
DEVICE="${DEVICE:-gpu}"
OUT="${OUT:-benchmarks/results/bench-gpu}"
if [ "$DEVICE" = gpu ]; then
  python -m pytest tests/test_parity.py -k gpu -q -p no:cacheprovider
fi
python -m zoo.cli bench --device "$DEVICE" --repeats "${REPEATS:-5}" --out "$OUT" ${MODELS:-}
cat "$OUT/bench.md"
