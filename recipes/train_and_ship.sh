#!/usr/bin/env bash
# Reproduce a shipped checkpoint: train with the model's config, bundle it, measure it in both backends.
#   recipes/train_and_ship.sh MODEL TAG [extra `zoo train` options]
# Needs the data: --data-dir or $ZOO_DATA_DIR (a folder of <dataset>/<split>.parquet), else the Hub.
set -euo pipefail
model=$1 tag=$2; shift 2
out=runs/$model
zoo train "$model" --out "$out" --no-progress "$@"
zoo ship "$model" --weights "$out/final.safetensors" --tag "$tag" --recipe "recipes/train_and_ship.sh $model $tag $*"
for backend in torch jax; do zoo eval "$model" --backend "$backend" --record; done
