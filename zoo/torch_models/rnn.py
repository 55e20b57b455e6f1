import torch
from torch import nn

from .layers import RNN


class RNNClassifier(nn.Module):
    """Embedding, multi-layer bidirectional LSTM or GRU over masked sequences, linear head on the last
    layer's final forward and backward states. Input: right-padded token ids (N, T)."""

    def __init__(self, cell: str = "lstm", vocab_size: int = 10000, embed_dim: int = 100, hidden_size: int = 128,
                 num_layers: int = 2, num_classes: int = 2, dropout: float = 0.0, pad_id: int = 0,
                 forget_bias: float | None = None):
        super().__init__()
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = RNN(cell, embed_dim, hidden_size, num_layers, bidirectional=True, dropout=dropout, forget_bias=forget_bias)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        lengths = (input_ids != self.pad_id).sum(dim=1)
        x = self.embedding(input_ids)
        _, h_n = self.rnn(x, lengths)
        x = torch.cat([h_n[-2], h_n[-1]], dim=1)  # last layer: forward end, backward start
        x = self.dropout(x)
        return self.fc(x)
