"""Flax-native state files beside the safetensors checkpoint: msgpack (`flax.serialization`, no pickle).

The msgpack file holds {"zoo_metadata": <the checkpoint's string metadata>, "state": <nnx pure dict>},
so it converts back to safetensors without outside information."""

from __future__ import annotations

import os
from pathlib import Path

from .atomic import write_bytes_atomic
from .checkpoint import CheckpointError, read_checkpoint, write_checkpoint


def safetensors_to_msgpack(src: str, dst: str | os.PathLike) -> Path:
    from flax import nnx, serialization

    from . import api

    ckpt = read_checkpoint(src)
    model = api.load(src, backend="jax")
    payload = {"zoo_metadata": ckpt.metadata, "state": nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))}  # no RNG state
    dst = Path(dst)
    write_bytes_atomic(dst, serialization.msgpack_serialize(payload))
    return dst


def msgpack_to_safetensors(src: str, dst: str | os.PathLike) -> Path:
    from flax import nnx, serialization

    from . import convert
    from .api import spec_from_checkpoint
    from .backends import get_backend
    from .checkpoint import Checkpoint, parse_metadata

    try:
        payload = serialization.msgpack_restore(Path(src).read_bytes())
        metadata = {k: str(v) for k, v in payload["zoo_metadata"].items()}
        pure_state = payload["state"]
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise CheckpointError(f"{src}: not a zoo msgpack state file ({type(e).__name__}: {e})") from None
    ckpt = Checkpoint(path=src, tensors={}, metadata=metadata, **parse_metadata(metadata, src))
    model = get_backend("jax").build(spec_from_checkpoint(ckpt), source=src)
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    try:
        nnx.replace_by_pure_dict(state, pure_state)
    except Exception as e:
        raise CheckpointError(f"{src}: state does not match architecture {ckpt.arch!r}: {e}") from None
    nnx.update(model, state)
    return write_checkpoint(dst, convert.flax_to_torch(model), metadata)
