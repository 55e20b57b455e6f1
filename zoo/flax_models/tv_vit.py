"""torchvision's Vision Transformer (`torchvision.models.vision_transformer`) in Flax NNX, NHWC: attribute paths are the
PyTorch twin's module paths and its initialisation torchvision's, so one checkpoint serves both."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import OwnParamsModule, Sequential, dot_product_attention, trunc_normal, uniform


def gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)  # torch's nn.GELU(): erf, not jax's default tanh approximation


class MLPBlock(Sequential):
    """Linear, exact GELU, dropout, Linear, dropout; xavier-uniform weights, N(0, 1e-6) biases."""

    def __init__(self, in_dim: int, mlp_dim: int, dropout: float, *, rngs: nnx.Rngs):
        super().__init__([nnx.Linear(in_dim, mlp_dim, rngs=rngs), gelu, nnx.Dropout(dropout, rngs=rngs),
                          nnx.Linear(mlp_dim, in_dim, rngs=rngs), nnx.Dropout(dropout, rngs=rngs)])

        for _, m in nnx.iter_modules(self):
            if isinstance(m, nnx.Linear):
                m.kernel[...] = nnx.initializers.xavier_uniform()(rngs.params(), m.kernel.shape, m.kernel.dtype)
                if m.bias is not None:
                    m.bias[...] = nnx.initializers.normal(1e-6)(rngs.params(), m.bias.shape, m.bias.dtype)


def MultiheadAttention(embed_dim: int, num_heads: int, dropout: float, *, rngs: nnx.Rngs) -> nnx.MultiHeadAttention:
    """torch's `nn.MultiheadAttention` initialisation: xavier-uniform over the packed (3E, E) `in_proj_weight`
    (bound sqrt(6 / 4E)), Linear's default U(+-1/sqrt(E)) for `out_proj`, zero biases."""
    return nnx.MultiHeadAttention(num_heads, embed_dim, dropout_rate=dropout, broadcast_dropout=False, decode=False,
                                  kernel_init=uniform(math.sqrt(6 / (4 * embed_dim))), out_kernel_init=uniform(1 / math.sqrt(embed_dim)),
                                  attention_fn=dot_product_attention, rngs=rngs)


class EncoderBlock(nnx.Module):
    """Pre-norm transformer block: LayerNorm, self-attention, dropout, residual; LayerNorm, MLP, residual."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float, attention_dropout: float, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.ln_1 = nnx.LayerNorm(hidden_dim, epsilon=1e-6, use_fast_variance=False, rngs=rngs)
        self.self_attention = MultiheadAttention(hidden_dim, num_heads, dropout=attention_dropout, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.ln_2 = nnx.LayerNorm(hidden_dim, epsilon=1e-6, use_fast_variance=False, rngs=rngs)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout, rngs=rngs)

    def __call__(self, input: jax.Array) -> jax.Array:
        x = self.ln_1(input)
        x = self.self_attention(x)
        x = self.dropout(x)
        x = x + input

        y = self.ln_2(x)
        y = self.mlp(y)
        return x + y


class Encoder(OwnParamsModule):
    """Learned position embedding (N(0, 0.02), from BERT), dropout, `num_layers` EncoderBlocks, final LayerNorm."""

    def __init__(self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float,
                 attention_dropout: float, *, rngs: nnx.Rngs):
        self.pos_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, seq_length, hidden_dim), jnp.float32))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.layers = nnx.Dict(
            (f"encoder_layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, rngs=rngs))
            for i in range(num_layers)
        )
        self.ln = nnx.LayerNorm(hidden_dim, epsilon=1e-6, use_fast_variance=False, rngs=rngs)

    def __call__(self, input: jax.Array) -> jax.Array:
        input = input + self.pos_embedding[...]
        x = self.dropout(input)
        for i in range(len(self.layers)):  # by index: nnx.Dict comes back from split/merge (jit) with its keys sorted as strings
            x = self.layers[f"encoder_layer_{i}"](x)
        return self.ln(x)


class VisionTransformer(OwnParamsModule):
    """ViT (https://arxiv.org/abs/2010.11929): patchify conv, class token, encoder, linear head on the class token.
    Takes `image_size` x `image_size` images only, as torchvision's does."""

    def __init__(self, image_size: int = 224, patch_size: int = 16, num_layers: int = 12, num_heads: int = 12, hidden_dim: int = 768,
                 mlp_dim: int = 3072, dropout: float = 0.0, attention_dropout: float = 0.0, num_classes: int = 1000, *, rngs: nnx.Rngs):
        if image_size % patch_size != 0:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.conv_proj = nnx.Conv(3, hidden_dim, (patch_size, patch_size), strides=patch_size, padding="VALID", rngs=rngs)
        seq_length = (image_size // patch_size) ** 2
        self.class_token = nnx.Param(jnp.zeros((1, 1, hidden_dim), jnp.float32))
        seq_length += 1
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, rngs=rngs)
        self.seq_length = seq_length
        self.heads = nnx.Dict(head=nnx.Linear(hidden_dim, num_classes, rngs=rngs))

        fan_in = self.conv_proj.in_features * patch_size * patch_size
        kernel = self.conv_proj.kernel
        kernel[...] = trunc_normal(std=math.sqrt(1 / fan_in))(rngs.params(), kernel.shape, kernel.dtype)
        self.conv_proj.bias[...] = jnp.zeros_like(self.conv_proj.bias[...])
        self.heads.head.kernel[...] = jnp.zeros_like(self.heads.head.kernel[...])
        self.heads.head.bias[...] = jnp.zeros_like(self.heads.head.bias[...])

    def _process_input(self, x: jax.Array) -> jax.Array:
        """(n, h, w, c) images -> (n, n_h * n_w, hidden_dim) patch embeddings."""
        n, h, w, c = x.shape
        p = self.patch_size
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"Wrong image size! Expected {self.image_size}x{self.image_size} but got {h}x{w}")
        n_h = h // p
        n_w = w // p
        x = self.conv_proj(x)  # (n, n_h, n_w, hidden_dim)
        x = x.reshape(n, n_h * n_w, self.hidden_dim)  # row-major patches, torch's order
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self._process_input(x)
        n = x.shape[0]
        batch_class_token = jnp.broadcast_to(self.class_token[...], (n, 1, self.hidden_dim))
        x = jnp.concatenate([batch_class_token, x], axis=1)
        x = self.encoder(x)
        x = x[:, 0]  # the class token
        x = self.heads.head(x)
        return x
