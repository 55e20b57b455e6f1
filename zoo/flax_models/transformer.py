import jax
import jax.numpy as jnp
from flax import nnx

from .layers import dot_product_attention


class EncoderLayer(nnx.Module):
    """Pre-norm encoder block: LayerNorm, self-attention, residual; LayerNorm, MLP (exact GELU), residual."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int, dropout: float, layer_norm_eps: float, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, epsilon=layer_norm_eps, use_fast_variance=False, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads, dim, dropout_rate=dropout, broadcast_dropout=False, decode=False,
                                           attention_fn=dot_product_attention, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=layer_norm_eps, use_fast_variance=False, rngs=rngs)
        self.ff1 = nnx.Linear(dim, ff_dim, rngs=rngs)
        self.ff2 = nnx.Linear(ff_dim, dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        h = self.norm1(x)
        h = self.attn(h, mask=mask[:, None, None, :])  # flax: True = attend
        x = x + self.dropout(h)
        h = self.ff2(self.dropout(jax.nn.gelu(self.ff1(self.norm2(x)), approximate=False)))
        return x + self.dropout(h)


class TransformerClassifier(nnx.Module):
    """Token + learned position embeddings, pre-norm encoder blocks, final LayerNorm, mean over real
    tokens only, linear head. Input: right-padded token ids (N, T), T <= max_len."""

    def __init__(self, vocab_size: int = 10000, max_len: int = 256, dim: int = 128, num_heads: int = 4, num_layers: int = 2,
                 ff_dim: int = 256, num_classes: int = 2, dropout: float = 0.1, layer_norm_eps: float = 1e-5, pad_id: int = 0,
                 *, rngs: nnx.Rngs):
        self.pad_id = pad_id
        self.embedding = nnx.Embed(vocab_size, dim, rngs=rngs)
        self.position = nnx.Embed(max_len, dim, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(dim, num_heads, ff_dim, dropout, layer_norm_eps, rngs=rngs) for _ in range(num_layers)])
        self.norm = nnx.LayerNorm(dim, epsilon=layer_norm_eps, use_fast_variance=False, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.fc = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        mask = input_ids != self.pad_id
        positions = jnp.arange(input_ids.shape[1])
        x = self.dropout(self.embedding(input_ids) + self.position(positions)[None])
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)
        weights = mask[..., None].astype(x.dtype)
        x = (x * weights).sum(axis=1) / weights.sum(axis=1)
        x = self.dropout(x)
        return self.fc(x)
