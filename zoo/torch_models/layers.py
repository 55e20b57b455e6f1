"""PyTorch layers that mirror the Flax twins' layers (`zoo/flax_models/layers.py`) call for call."""

import torch
from torch import nn
from torch.nn import functional as F


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence's first `length` steps in place, leaving the padding where it is.
    (B, T, ...) -> (B, T, ...); applying it twice gives `x` back."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return torch.gather(x, 1, index[..., None].expand_as(x))


class _Masked:
    """`forward(x, lengths)` over right-padded batches, as the Flax `RNN`; `forward(x)` is torch's own (packed
    sequences too). Same result as packed sequences, but through the fused kernel: PyTorch's packed backward
    on CPU zero-fills a full-size gradient per time step (SliceBackward0), 5-13x slower on IMDb batches."""

    def _direction(self, x: torch.Tensor, lengths: torch.Tensor, layer: int, suffix: str):
        """One direction of one layer with its own parameters; the backward direction reads each sequence
        reversed within its length. Returns the outputs (zero past each end) and the state after the last real token."""
        params = [getattr(self, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if suffix:
            x = reverse_padded(x, lengths)
        zeros = x.new_zeros(1, x.shape[0], self.hidden_size)
        if self.mode == "LSTM":
            out = torch.ops.aten.lstm(x, [zeros, zeros], params, True, 1, 0.0, self.training, False, True)[0]
        else:
            out = torch.ops.aten.gru(x, zeros, params, True, 1, 0.0, self.training, False, True)[0]
        mask = torch.arange(x.shape[1], device=x.device)[None, :, None] < lengths[:, None, None]
        last = out[torch.arange(x.shape[0], device=x.device), lengths - 1]
        out = out * mask
        return (reverse_padded(out, lengths) if suffix else out), last

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        """x: (B, T, input_size); lengths: (B,) >= 1. Returns outputs (B, T, D*H) and the final hidden
        states (num_layers * D, B, H) in PyTorch's `h_n` order."""
        if lengths is None:
            return super().forward(x)
        finals = []
        for layer in range(self.num_layers):
            if layer > 0:
                x = F.dropout(x, self.dropout, self.training)  # between layers only, as torch.nn.LSTM(dropout=...)
            outs = []
            for suffix in ("", "_reverse") if self.bidirectional else ("",):
                out, h = self._direction(x, lengths, layer, suffix)
                outs.append(out)
                finals.append(h)
            x = torch.cat(outs, dim=-1)
        return x, torch.stack(finals)


class MaskedLSTM(_Masked, nn.LSTM):
    pass


class MaskedGRU(_Masked, nn.GRU):
    pass


def RNN(mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
        dropout: float = 0.0, forget_bias: float | None = None) -> nn.Module:
    """Multi-layer, optionally bidirectional LSTM or GRU, batch-first: a `torch.nn.LSTM` / `torch.nn.GRU` (same
    parameters, same state dict) whose `forward(x, lengths)` is the Flax twin's `RNN.__call__`.
    `forget_bias` (LSTM only): every forget gate starts at sigmoid(forget_bias) (`bias_ih`'s forget rows set to
    it, `bias_hh`'s to 0), instead of PyTorch's uniform initialisation of those rows."""
    if mode not in ("lstm", "gru"):
        raise ValueError(f"RNN mode must be 'lstm' or 'gru', got {mode!r}")
    if forget_bias is not None and mode != "lstm":
        raise ValueError(f"forget_bias={forget_bias}: only an LSTM has a forget gate, not a {mode.upper()}")
    cls = MaskedLSTM if mode == "lstm" else MaskedGRU
    rnn = cls(input_size, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional, dropout=dropout)
    if forget_bias is not None:
        forget = slice(hidden_size, 2 * hidden_size)  # gate order i, f, g, o
        with torch.no_grad():
            for name, value in rnn.named_parameters():
                if name.startswith("bias_"):
                    value[forget] = forget_bias if name.startswith("bias_ih") else 0.0
    return rnn


class StochasticDepth(nn.Module):
    """torchvision's `StochasticDepth(p, "row")`: in training, each sample's residual branch is dropped with
    probability `p` and kept ones are scaled by 1 / (1 - p). The Flax twin is `nnx.Dropout` broadcast over all
    but the batch axis, the same operation."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            keep.div_(survival)
        return x * keep


# torchvision's convolutional building blocks (Conv2dNormActivation, SqueezeExcitation), by activation name so that
# the Flax twins take the very same arguments.
ACTIVATIONS = {"relu": nn.ReLU, "hardswish": nn.Hardswish, "silu": nn.SiLU, "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid}


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's `_make_divisible`: `v` rounded to a multiple of `divisor`, never more than 10% below `v`."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class Conv2dNormActivation(nn.Sequential):
    """torchvision's `Conv2dNormActivation` with BatchNorm: `0` a bias-free conv padded by (k - 1) // 2, `1` BatchNorm,
    `2` the activation ("relu", "hardswish", "silu"; None: none)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 activation: str | None = "relu", eps: float = 1e-5, momentum: float = 0.1):
        padding = (kernel_size - 1) // 2
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum),
        ]
        if activation is not None:
            layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision's `SqueezeExcitation`: global average pool, 1x1 conv `fc1`, activation, 1x1 conv `fc2`, scale
    activation; the input multiplied by that per-channel scale."""

    def __init__(self, input_channels: int, squeeze_channels: int, activation: str = "relu", scale_activation: str = "sigmoid"):
        super().__init__()
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = ACTIVATIONS[activation]()
        self.scale_activation = ACTIVATIONS[scale_activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)  # what AdaptiveAvgPool2d(1) computes, bit for bit
        scale = self.fc2(self.activation(self.fc1(scale)))
        return self.scale_activation(scale) * x
