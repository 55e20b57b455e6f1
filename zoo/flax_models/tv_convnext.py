"""torchvision's ConvNeXt (`torchvision.models.convnext`) in Flax NNX, NHWC: attribute paths are the PyTorch twin's
module paths and its initialisation torchvision's, so one checkpoint serves both."""

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import OwnParamsModule, Sequential, StochasticDepth, trunc_normal


def LayerNorm2d(num_channels: int, eps: float, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over the channels, the last axis of an NHWC tensor."""
    return nnx.LayerNorm(num_channels, epsilon=eps, use_fast_variance=False, rngs=rngs)


def identity(x: jax.Array) -> jax.Array:
    return x


def Permute(dims: list[int]):
    """torchvision's NCHW <-> NHWC `Permute`: nothing to do where activations stay NHWC; kept so the indexes line up."""
    return identity


def gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)  # torch's nn.GELU(): erf, not jax's default tanh approximation


def avgpool(x: jax.Array) -> jax.Array:
    return x.mean(axis=(1, 2), keepdims=True)  # torch's AdaptiveAvgPool2d(1)


def flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


class CNBlock(OwnParamsModule):
    """Depthwise 7x7 conv, LayerNorm, Linear 4x, exact GELU, Linear (channels-last), scaled per channel by
    `layer_scale`, stochastic depth, residual."""

    def __init__(self, dim: int, layer_scale: float, stochastic_depth_prob: float, *, rngs: nnx.Rngs):
        self.block = Sequential([
            nnx.Conv(dim, dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=dim, use_bias=True, rngs=rngs),
            Permute([0, 2, 3, 1]),
            nnx.LayerNorm(dim, epsilon=1e-6, use_fast_variance=False, rngs=rngs),
            nnx.Linear(in_features=dim, out_features=4 * dim, use_bias=True, rngs=rngs),
            gelu,
            nnx.Linear(in_features=4 * dim, out_features=dim, use_bias=True, rngs=rngs),
            Permute([0, 3, 1, 2]),
        ])
        self.layer_scale = nnx.Param(jnp.ones((dim, 1, 1), jnp.float32) * layer_scale)  # PyTorch's shape, for the checkpoint
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        result = self.layer_scale[...].reshape(-1) * self.block(x)  # (C, 1, 1) -> (C,): NHWC's channels are last
        result = self.stochastic_depth(result)
        return result + x


class ConvNeXt(nnx.Module):
    """Stem (4x4 stride-4 conv, LayerNorm2d), stages of `depths[i]` CNBlocks of width `dims[i]` with LayerNorm2d and a
    2x2 stride-2 conv between stages, global average pool, classifier (LayerNorm2d, flatten, Linear). Stochastic depth
    grows linearly from 0 at the first block to `stochastic_depth_prob` at the last."""

    def __init__(self, depths: list[int], dims: list[int], stochastic_depth_prob: float = 0.1, layer_scale: float = 1e-6,
                 num_classes: int = 1000, *, rngs: nnx.Rngs):
        if not depths or len(depths) != len(dims):
            raise ValueError(f"ConvNeXt needs one depth per stage width, got depths={depths}, dims={dims}")
        layers = [
            Sequential([  # stem: torchvision's Conv2dNormActivation without activation
                nnx.Conv(3, dims[0], (4, 4), strides=4, padding="VALID", use_bias=True, rngs=rngs),
                LayerNorm2d(dims[0], eps=1e-6, rngs=rngs),
            ])
        ]
        total_stage_blocks = sum(depths)
        stage_block_id = 0
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            stage = []
            for _ in range(depth):
                sd_prob = stochastic_depth_prob * stage_block_id / (total_stage_blocks - 1.0)
                stage.append(CNBlock(dim, layer_scale, sd_prob, rngs=rngs))
                stage_block_id += 1
            layers.append(Sequential(stage))
            if i + 1 < len(dims):  # downsampling
                layers.append(
                    Sequential([
                        LayerNorm2d(dim, eps=1e-6, rngs=rngs),
                        nnx.Conv(dim, dims[i + 1], (2, 2), strides=2, padding="VALID", rngs=rngs),
                    ])
                )
        self.features = Sequential(layers)
        self.avgpool = avgpool
        self.classifier = Sequential([
            LayerNorm2d(dims[-1], eps=1e-6, rngs=rngs),
            flatten,
            nnx.Linear(dims[-1], num_classes, rngs=rngs),
        ])

        for _, m in nnx.iter_modules(self):
            if isinstance(m, (nnx.Conv, nnx.Linear)):
                m.kernel[...] = trunc_normal(std=0.02)(rngs.params(), m.kernel.shape, m.kernel.dtype)
                if m.bias is not None:
                    m.bias[...] = jnp.zeros_like(m.bias[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        x = self.avgpool(x)
        x = self.classifier(x)
        return x
