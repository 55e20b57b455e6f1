import jax
import jax.numpy as jnp
from flax import nnx

from .layers import RNN


class RNNClassifier(nnx.Module):
    """Embedding, multi-layer bidirectional LSTM or GRU over masked sequences, linear head on the last
    layer's final forward and backward states. Input: right-padded token ids (N, T)."""

    def __init__(self, cell: str = "lstm", vocab_size: int = 10000, embed_dim: int = 100, hidden_size: int = 128,
                 num_layers: int = 2, num_classes: int = 2, dropout: float = 0.0, pad_id: int = 0,
                 forget_bias: float | None = None, *, rngs: nnx.Rngs):
        self.pad_id = pad_id
        self.embedding = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
        self.rnn = RNN(cell, embed_dim, hidden_size, num_layers, bidirectional=True, dropout=dropout, forget_bias=forget_bias,
                       rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.fc = nnx.Linear(2 * hidden_size, num_classes, rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        lengths = (input_ids != self.pad_id).sum(axis=1)
        x = self.embedding(input_ids)
        _, h_n = self.rnn(x, lengths)
        x = jnp.concatenate([h_n[-2], h_n[-1]], axis=1)  # last layer: forward end, backward start
        x = self.dropout(x)
        return self.fc(x)
