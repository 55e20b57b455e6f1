import torch
from torch import nn
from torch.nn import functional as F


class EncoderLayer(nn.Module):
    """Pre-norm encoder block: LayerNorm, self-attention, residual; LayerNorm, MLP (exact GELU), residual."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int, dropout: float, layer_norm_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.ff1 = nn.Linear(dim, ff_dim)
        self.ff2 = nn.Linear(ff_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        h, _ = self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)  # torch: True = ignore
        x = x + self.dropout(h)
        h = self.ff2(self.dropout(F.gelu(self.ff1(self.norm2(x)))))
        return x + self.dropout(h)


class TransformerClassifier(nn.Module):
    """Token + learned position embeddings, pre-norm encoder blocks, final LayerNorm, mean over real
    tokens only, linear head. Input: right-padded token ids (N, T), T <= max_len."""

    def __init__(self, vocab_size: int = 10000, max_len: int = 256, dim: int = 128, num_heads: int = 4, num_layers: int = 2,
                 ff_dim: int = 256, num_classes: int = 2, dropout: float = 0.1, layer_norm_eps: float = 1e-5, pad_id: int = 0):
        super().__init__()
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_len, dim)
        self.layers = nn.ModuleList([EncoderLayer(dim, num_heads, ff_dim, dropout, layer_norm_eps) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids != self.pad_id
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.dropout(self.embedding(input_ids) + self.position(positions)[None])
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)
        weights = mask[..., None].to(x.dtype)
        x = (x * weights).sum(dim=1) / weights.sum(dim=1)
        x = self.dropout(x)
        return self.fc(x)
