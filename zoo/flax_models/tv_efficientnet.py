"""torchvision's EfficientNet B0-B7 (efficientnet_b0, ...): the Flax twin of `zoo/torch_models/tv_efficientnet.py`,
at the same paths, with initialisers equivalent to torchvision's. NHWC."""

import math

import jax
from flax import nnx

from .layers import Conv2dNormActivation, Sequential, SqueezeExcitation, StochasticDepth, make_divisible, uniform

# Table 1 of the EfficientNet paper, as torchvision lists it for width and depth multipliers 1:
# (expand ratio, kernel, stride, input channels, output channels, layers)
SETTINGS = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


class MBConv(nnx.Module):
    """`block`: 1x1 expand (when the ratio is not 1), depthwise kxk (with the stride), squeeze-excitation (SiLU,
    sigmoid scale; squeezed to a quarter of the block's input width), 1x1 project without activation; SiLU
    throughout. With an unchanged shape, the input plus the block's output under stochastic depth."""

    def __init__(self, expand_ratio: float, kernel: int, stride: int, input_channels: int, out_channels: int,
                 stochastic_depth_prob: float, norm: dict, *, rngs: nnx.Rngs):
        self.use_res_connect = stride == 1 and input_channels == out_channels
        expanded_channels = make_divisible(input_channels * expand_ratio, 8)
        layers = []
        if expanded_channels != input_channels:
            layers.append(Conv2dNormActivation(input_channels, expanded_channels, 1, activation="silu", **norm, rngs=rngs))
        layers.append(Conv2dNormActivation(expanded_channels, expanded_channels, kernel, stride, groups=expanded_channels,
                                           activation="silu", **norm, rngs=rngs))
        layers.append(SqueezeExcitation(expanded_channels, max(1, input_channels // 4), activation="silu", rngs=rngs))
        layers.append(Conv2dNormActivation(expanded_channels, out_channels, 1, activation=None, **norm, rngs=rngs))
        self.block = Sequential(layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result) + x
        return result


class EfficientNet(nnx.Module):
    """`features`: stride-2 3x3 stem, seven stages of MBConv blocks, 1x1 conv to 4x the last width, SiLU throughout;
    global average pool; `classifier`: dropout, Linear. Block i of n drops its residual branch with probability
    stochastic_depth_prob * i / n. BatchNorm: PyTorch's defaults, as torchvision's B0-B4 (B5-B7: eps 1e-3, momentum 0.01)."""

    def __init__(self, width_mult: float = 1.0, depth_mult: float = 1.0, dropout: float = 0.2, stochastic_depth_prob: float = 0.2,
                 num_classes: int = 1000, norm_eps: float = 1e-5, norm_momentum: float = 0.1, *, rngs: nnx.Rngs):
        norm = {"eps": norm_eps, "momentum": norm_momentum}
        settings = [(expand, kernel, stride, make_divisible(cin * width_mult, 8), make_divisible(cout * width_mult, 8),
                     int(math.ceil(n * depth_mult))) for expand, kernel, stride, cin, cout, n in SETTINGS]
        layers = [Conv2dNormActivation(3, settings[0][3], 3, 2, activation="silu", **norm, rngs=rngs)]
        total_stage_blocks = sum(setting[-1] for setting in settings)
        stage_block_id = 0
        for expand, kernel, stride, input_channels, out_channels, num_layers in settings:
            stage = []
            for index in range(num_layers):
                sd_prob = stochastic_depth_prob * float(stage_block_id) / total_stage_blocks  # as torchvision computes it
                block_input, block_stride = (input_channels, stride) if index == 0 else (out_channels, 1)
                stage.append(MBConv(expand, kernel, block_stride, block_input, out_channels, sd_prob, norm, rngs=rngs))
                stage_block_id += 1
            layers.append(Sequential(stage))
        lastconv_input_channels = settings[-1][4]
        lastconv_output_channels = 4 * lastconv_input_channels
        layers.append(Conv2dNormActivation(lastconv_input_channels, lastconv_output_channels, 1, activation="silu", **norm, rngs=rngs))
        self.features = Sequential(layers)
        self.classifier = Sequential([
            nnx.Dropout(dropout, rngs=rngs),
            nnx.Linear(lastconv_output_channels, num_classes, kernel_init=uniform(1.0 / math.sqrt(num_classes)),  # torchvision's
                       bias_init=nnx.initializers.zeros_init(), rngs=rngs),
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        x = x.mean(axis=(1, 2))
        return self.classifier(x)
