"""Flax layers with PyTorch's exact semantics, where Flax's built-ins differ."""

import jax
import jax.numpy as jnp
from flax import nnx


class BatchNorm(nnx.Module):
    """BatchNorm over the last (channel) axis with `torch.nn.BatchNorm*d` semantics.

    Differs from `nnx.BatchNorm` on purpose: momentum in PyTorch's convention (weight of the new batch),
    two-pass biased variance for normalising, the unbiased variance (n/(n-1)) in the running estimate,
    and a `num_batches_tracked` counter, so running statistics match PyTorch after every step.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5, use_running_average: bool = False):
        self.num_features = num_features
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        axes = tuple(range(x.ndim - 1))
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean = x.mean(axis=axes)
            var = jnp.square(x - mean).mean(axis=axes)
            n = x.size // x.shape[-1]
            m = self.momentum
            unbiased = jax.lax.stop_gradient(var) * (n / max(n - 1, 1))
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1 - m) * self.var[...] + m * unbiased
            self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
