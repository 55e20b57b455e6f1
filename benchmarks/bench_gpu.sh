#!/usr/bin/env bash
# The GPU checks in one run (a lent GPU machine has minutes, not hours): the GPU parity tests and their report
# (reports/parity_gpu.json), then `zoo bench --device gpu` into benchmarks/results/bench-gpu/, the torchvision twins
# first. Each stage has a time limit in seconds (PARITY_S; the bench gets what is left of DEADLINE_S) and the bench
# keeps every configuration it finished.
# Then `python -m zoo.docs --write` puts both into README.md and BENCHMARKS.md.
# Test it on CPU first: DEVICE=cpu BENCH_OUT=/tmp/b MODELS="mlp-mnist resnet18" BATCH=2 bash benchmarks/bench_gpu.sh
set -uo pipefail
PYTHON="${PYTHON:-python3}"
DEVICE="${DEVICE:-gpu}"
BENCH_OUT="${BENCH_OUT:-benchmarks/results/bench-gpu}"  # not OUT: a lent machine sets that
TORCHVISION_TWINS="resnet18 mobilenet_v3_small efficientnet_b0 resnet50 convnext_tiny vit_b_16"
MODELS="${MODELS:-$TORCHVISION_TWINS $("$PYTHON" -c 'from zoo.bench import distinct_models; print(*distinct_models())')}"
failed=0
if [ "$DEVICE" = gpu ]; then
  ZOO_PARITY_REPORT=1 timeout "${PARITY_S:-600}" "$PYTHON" -m pytest tests/test_parity.py -k gpu -p no:cacheprovider \
    -n "${WORKERS:-4}" || failed=1
  "$PYTHON" -m zoo.docs --gpu-parity-report || failed=1
fi
timeout "$(( ${DEADLINE_S:-3600} - SECONDS ))" "$PYTHON" -m zoo.cli bench --device "$DEVICE" --batch "${BATCH:-64}" --repeats "${REPEATS:-5}" \
  --out "$BENCH_OUT" $MODELS || failed=1
cat "$BENCH_OUT/bench.md"
exit $failed
