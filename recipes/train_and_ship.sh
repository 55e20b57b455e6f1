#!/usr/bin/env bash
# Reproduce a shipped checkpoint: train with the model's config, bundle it, measure it in both backends.
#   recipes/train_and_ship.sh MODEL TAG [extra `zoo train` options]
# A tag already in the registry is trained as it was built (`zoo train MODEL.TAG`: its config, preprocessing and
# bundled recipe zoo/recipes/MODEL.TAG.json once the default has moved on); a new tag as the model is built today.
# Needs the data: --data-dir or $ZOO_DATA_DIR (a folder of <dataset>/<split>.parquet), else the Hub.
set -euo pipefail
model=$1 tag=$2; shift 2
train=$model
if python -c "import sys, zoo.registry as r; sys.exit('$tag' not in r.model_info('$model').get('weights', {}))"; then
  train=$model.$tag
fi
out=runs/$model
zoo train "$train" --out "$out" --no-progress "$@"
zoo ship "$model" --weights "$out/final.safetensors" --tag "$tag" --recipe "recipes/train_and_ship.sh $model $tag $*"
for backend in torch jax; do zoo eval "$model" --backend "$backend" --record; done
