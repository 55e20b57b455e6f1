"""Flax layers with PyTorch's exact semantics, where Flax's built-ins differ."""

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights


class OwnParamsModule(nnx.Module):
    """A module that holds parameters of its own beside its sublayers (ConvNeXt's `layer_scale`, ViT's
    `class_token`), in PyTorch's names and shapes; the converter's `OwnParams` rule maps them one to one."""


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


def max_pool(x: jax.Array, size: int) -> jax.Array:
    """Non-overlapping max pooling (window = stride = `size`, PyTorch's floor mode) as a reshape and a max.
    Its gradient is a comparison; `nnx.max_pool`'s (XLA's select-and-scatter) made cnn-mnist's training step
    twice as slow on CPU. (N, H, W, C) -> (N, H // size, W // size, C)."""
    n, h, w, c = x.shape
    h, w = h // size, w // size
    return x[:, :h * size, :w * size].reshape(n, h, size, w, size, c).max(axis=(2, 4))


def dot_product_attention(query, key, value, mask=None, **options) -> jax.Array:
    """`nnx.dot_product_attention` without its shortcut to `jax.nn.dot_product_attention`, whose softmax
    runs in float32 whatever the input's precision: this way the twins agree in float64 as well.
    Takes `MultiHeadAttention`'s `attention_fn` arguments; (B, T, heads, head_dim) in and out."""
    weights = dot_product_attention_weights(query, key, mask=mask, **options)  # (B, heads, T, T)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=options.get("precision"))


def reverse_padded(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Reverse each sequence's first `length` steps in place, leaving the padding where it is.
    (B, T, ...) -> (B, T, ...); applying it twice gives `x` back."""
    t = jnp.arange(x.shape[1])[None, :]
    index = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


class RNN(nnx.Module):
    """Multi-layer, optionally bidirectional LSTM or GRU with `torch.nn.LSTM` / `torch.nn.GRU`'s
    parameters one for one (`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, `..._reverse`;
    gate order i, f, g, o for LSTM and r, z, n for GRU, with GRU's separate `b_hn`), so checkpoints
    convert without loss. `nnx.OptimizedLSTMCell` (one bias) and `nnx.GRUCell` (no `b_hn`) cannot.

    Batch-first. Sequences are right-padded and `lengths` gives each one's real length: outputs past it
    are zero and the final state is the state at the last real step, as PyTorch's packed sequences give;
    the backward direction starts at each sequence's last real token.
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, forget_bias: float | None = None, *, rngs: nnx.Rngs):
        if mode not in ("lstm", "gru"):
            raise ValueError(f"RNN mode must be 'lstm' or 'gru', got {mode!r}")
        if forget_bias is not None and mode != "lstm":
            raise ValueError(f"forget_bias={forget_bias}: only an LSTM has a forget gate, not a {mode.upper()}")
        self.mode, self.hidden_size, self.num_layers = mode, hidden_size, num_layers
        self.directions = ("", "_reverse") if bidirectional else ("",)
        gates = (4 if mode == "lstm" else 3) * hidden_size
        bound = 1.0 / hidden_size**0.5  # PyTorch's initialisation: U(-1/sqrt(H), 1/sqrt(H)) for every tensor
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * len(self.directions)
            for suffix in self.directions:
                for name, shape in (("weight_ih", (gates, layer_input)), ("weight_hh", (gates, hidden_size)),
                                    ("bias_ih", (gates,)), ("bias_hh", (gates,))):
                    value = jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)
                    if forget_bias is not None and name.startswith("bias_"):  # gate order i, f, g, o
                        value = value.at[hidden_size:2 * hidden_size].set(forget_bias if name == "bias_ih" else 0.0)
                    setattr(self, f"{name}_l{layer}{suffix}", nnx.Param(value))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def _cell(self, weight_hh, bias_hh):
        h_size = self.hidden_size

        def lstm(carry, x_proj):
            h, c = carry
            gates = x_proj + h @ weight_hh.T + bias_hh
            i, f, g, o = (gates[:, k * h_size:(k + 1) * h_size] for k in range(4))
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        def gru(carry, x_proj):
            (h,) = carry
            h_proj = h @ weight_hh.T + bias_hh
            xr, xz, xn = (x_proj[:, k * h_size:(k + 1) * h_size] for k in range(3))
            hr, hz, hn = (h_proj[:, k * h_size:(k + 1) * h_size] for k in range(3))
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = (1.0 - z) * n + z * h
            return (h,), h

        return lstm if self.mode == "lstm" else gru

    def _direction(self, x, lengths, mask, layer: int, suffix: str):
        p = {name: getattr(self, f"{name}_l{layer}{suffix}")[...] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        if suffix:
            x = reverse_padded(x, lengths)
        x_proj = x @ p["weight_ih"].T + p["bias_ih"]  # all time steps in one matmul, outside the scan
        cell = self._cell(p["weight_hh"], p["bias_hh"])
        zeros = jnp.zeros((x.shape[0], self.hidden_size), x.dtype)
        init = (zeros, zeros) if self.mode == "lstm" else (zeros,)

        def step(carry, inputs):
            x_t, m_t = inputs
            new_carry, h = cell(carry, x_t)
            keep = m_t[:, None]
            carry = tuple(jnp.where(keep, n, o) for n, o in zip(new_carry, carry, strict=True))  # frozen after the end
            return carry, jnp.where(keep, h, 0.0)

        carry, out = jax.lax.scan(step, init, (x_proj.swapaxes(0, 1), mask.T))
        out = out.swapaxes(0, 1)
        if suffix:
            out = reverse_padded(out, lengths)
        return out, carry[0]

    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: (B, T, input_size); lengths: (B,) >= 1. Returns outputs (B, T, D*H) and the final hidden
        states (num_layers * D, B, H) in PyTorch's `h_n` order."""
        mask = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
        finals = []
        for layer in range(self.num_layers):
            if layer > 0:
                x = self.dropout(x)  # between layers only, as torch.nn.LSTM(dropout=...)
            outs = []
            for suffix in self.directions:
                out, h = self._direction(x, lengths, mask, layer, suffix)
                outs.append(out)
                finals.append(h)
            x = jnp.concatenate(outs, axis=-1)
        return x, jnp.stack(finals)


def StochasticDepth(p: float, ndim: int = 4, *, rngs: nnx.Rngs) -> nnx.Dropout:
    """torchvision's `StochasticDepth(p, "row")`: one keep-or-drop per sample, kept ones scaled by 1 / (1 - p),
    which is `nnx.Dropout` with its mask broadcast over every axis but the batch."""
    return nnx.Dropout(p, broadcast_dims=tuple(range(1, ndim)), rngs=rngs)


@jax.custom_jvp
def hard_sigmoid(x: jax.Array) -> jax.Array:
    """`torch.nn.Hardsigmoid`: relu6(x + 3) / 6, as `jax.nn.hard_sigmoid`, with PyTorch's gradient. PyTorch's backward
    multiplies by the float32 constant 1.0f / 6.0f whatever the dtype, 3e-8 off 1/6 in float64 (and `* (1/6)`
    rather than `/ 6` in float32), which MobileNetV3's squeeze-excitation carries into every earlier gradient."""
    return jax.nn.relu6(x + 3.0) / 6.0


@hard_sigmoid.defjvp
def _hard_sigmoid_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    one_sixth = jnp.asarray(jnp.float32(1.0) / jnp.float32(6.0), x.dtype)
    return hard_sigmoid(x), jnp.where((x > -3.0) & (x < 3.0), t * one_sixth, jnp.zeros_like(t))


# torchvision's convolutional building blocks (Conv2dNormActivation, SqueezeExcitation), by activation name so that
# the PyTorch twins take the very same arguments.
ACTIVATIONS = {"relu": jax.nn.relu, "hardswish": jax.nn.hard_swish, "silu": jax.nn.silu, "sigmoid": jax.nn.sigmoid,
               "hardsigmoid": hard_sigmoid}
# torch's `kaiming_normal_(w, mode="fan_out")` (gain sqrt(2), untruncated normal), which torchvision's CNNs apply to
# every conv; Flax's HWIO fan-out (O * kh * kw) is PyTorch's, depthwise convs included.
KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def uniform(bound: float) -> nnx.Initializer:
    """U(-bound, bound), as PyTorch's `nn.init.uniform_(w, -bound, bound)` (nnx's `uniform` is U(0, scale))."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def trunc_normal(std: float, a: float = -2.0, b: float = 2.0) -> nnx.Initializer:
    """PyTorch's `nn.init.trunc_normal_(w, std=std, a=a, b=b)`: N(0, std) cut at a and b, which are absolute
    bounds, not multiples of std (nnx's `truncated_normal` cuts at +-2 std and rescales)."""

    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.truncated_normal(key, a / std, b / std, shape, dtype)

    return init


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's `_make_divisible`: `v` rounded to a multiple of `divisor`, never more than 10% below `v`."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class Sequential(nnx.List):
    """`torch.nn.Sequential`: layers applied in order, at PyTorch's indexes. Parameter-free entries (activations)
    may be plain functions; nnx.List keeps them as static entries."""

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self:
            x = layer(x)
        return x


class Conv2dNormActivation(Sequential):
    """torchvision's `Conv2dNormActivation` with BatchNorm: `0` a bias-free conv padded by (k - 1) // 2, `1` BatchNorm,
    `2` the activation ("relu", "hardswish", "silu"; None: none)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 activation: str | None = "relu", eps: float = 1e-5, momentum: float = 0.1, *, rngs: nnx.Rngs):
        padding = (kernel_size - 1) // 2
        layers = [
            nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), strides=stride, padding=((padding, padding),) * 2,
                     feature_group_count=groups, use_bias=False, kernel_init=KAIMING_FAN_OUT, rngs=rngs),
            BatchNorm(out_channels, epsilon=eps, momentum=momentum),
        ]
        if activation is not None:
            layers.append(ACTIVATIONS[activation])
        super().__init__(layers)


class SqueezeExcitation(nnx.Module):
    """torchvision's `SqueezeExcitation`: global average pool, 1x1 conv `fc1`, activation, 1x1 conv `fc2`, scale
    activation; the input multiplied by that per-channel scale."""

    def __init__(self, input_channels: int, squeeze_channels: int, activation: str = "relu", scale_activation: str = "sigmoid",
                 *, rngs: nnx.Rngs):
        self.fc1 = nnx.Conv(input_channels, squeeze_channels, (1, 1), kernel_init=KAIMING_FAN_OUT, rngs=rngs)
        self.fc2 = nnx.Conv(squeeze_channels, input_channels, (1, 1), kernel_init=KAIMING_FAN_OUT, rngs=rngs)
        self.activation = ACTIVATIONS[activation]
        self.scale_activation = ACTIVATIONS[scale_activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = x.mean(axis=(1, 2), keepdims=True)
        scale = self.fc2(self.activation(self.fc1(scale)))
        return self.scale_activation(scale) * x
