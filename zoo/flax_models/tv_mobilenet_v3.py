"""torchvision's MobileNetV3 (mobilenet_v3_small, mobilenet_v3_large): the Flax twin of
`zoo/torch_models/tv_mobilenet_v3.py`, at the same paths, with initialisers equivalent to torchvision's. NHWC."""

import jax
from flax import nnx

from .layers import Conv2dNormActivation, Sequential, SqueezeExcitation, make_divisible

# Tables 1 and 2 of the MobileNetV3 paper, as torchvision lists them (width multiplier 1, no dilation):
# (input channels, kernel, expanded channels, output channels, squeeze-excitation, activation, stride)
SETTINGS = {
    "small": [
        (16, 3, 16, 16, True, "RE", 2),
        (16, 3, 72, 24, False, "RE", 2),
        (24, 3, 88, 24, False, "RE", 1),
        (24, 5, 96, 40, True, "HS", 2),
        (40, 5, 240, 40, True, "HS", 1),
        (40, 5, 240, 40, True, "HS", 1),
        (40, 5, 120, 48, True, "HS", 1),
        (48, 5, 144, 48, True, "HS", 1),
        (48, 5, 288, 96, True, "HS", 2),
        (96, 5, 576, 96, True, "HS", 1),
        (96, 5, 576, 96, True, "HS", 1),
    ],
    "large": [
        (16, 3, 16, 16, False, "RE", 1),
        (16, 3, 64, 24, False, "RE", 2),
        (24, 3, 72, 24, False, "RE", 1),
        (24, 5, 72, 40, True, "RE", 2),
        (40, 5, 120, 40, True, "RE", 1),
        (40, 5, 120, 40, True, "RE", 1),
        (40, 3, 240, 80, False, "HS", 2),
        (80, 3, 200, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 480, 112, True, "HS", 1),
        (112, 3, 672, 112, True, "HS", 1),
        (112, 5, 672, 160, True, "HS", 2),
        (160, 5, 960, 160, True, "HS", 1),
        (160, 5, 960, 160, True, "HS", 1),
    ],
}
LAST_CHANNEL = {"small": 1024, "large": 1280}
NORM = {"eps": 0.001, "momentum": 0.01}  # torchvision's BatchNorm2d for MobileNetV3


class InvertedResidual(nnx.Module):
    """`block`: 1x1 expand (when the width changes), depthwise kxk (with the stride), squeeze-excitation (hard-sigmoid
    scale) if any, 1x1 project without activation; added to the input when the shape is unchanged."""

    def __init__(self, input_channels: int, kernel: int, expanded_channels: int, out_channels: int, use_se: bool,
                 activation: str, stride: int, *, rngs: nnx.Rngs):
        self.use_res_connect = stride == 1 and input_channels == out_channels
        activation = "hardswish" if activation == "HS" else "relu"
        layers = []
        if expanded_channels != input_channels:
            layers.append(Conv2dNormActivation(input_channels, expanded_channels, 1, activation=activation, **NORM, rngs=rngs))
        layers.append(Conv2dNormActivation(expanded_channels, expanded_channels, kernel, stride, groups=expanded_channels,
                                           activation=activation, **NORM, rngs=rngs))
        if use_se:
            layers.append(SqueezeExcitation(expanded_channels, make_divisible(expanded_channels // 4, 8), scale_activation="hardsigmoid",
                                            rngs=rngs))
        layers.append(Conv2dNormActivation(expanded_channels, out_channels, 1, activation=None, **NORM, rngs=rngs))
        self.block = Sequential(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        result = self.block(x)
        if self.use_res_connect:
            result = result + x
        return result


class MobileNetV3(nnx.Module):
    """`features`: stride-2 3x3 stem (hard-swish), the inverted residual blocks, 1x1 conv to 6x the last width
    (hard-swish); global average pool; `classifier`: Linear, hard-swish, dropout, Linear."""

    def __init__(self, variant: str = "small", dropout: float = 0.2, num_classes: int = 1000, *, rngs: nnx.Rngs):
        if variant not in SETTINGS:
            raise ValueError(f"MobileNetV3 variant must be one of {sorted(SETTINGS)}, got {variant!r}")
        settings = SETTINGS[variant]
        layers = [Conv2dNormActivation(3, settings[0][0], 3, 2, activation="hardswish", **NORM, rngs=rngs)]
        layers += [InvertedResidual(*setting, rngs=rngs) for setting in settings]
        lastconv_input_channels = settings[-1][3]
        lastconv_output_channels = 6 * lastconv_input_channels
        layers.append(Conv2dNormActivation(lastconv_input_channels, lastconv_output_channels, 1, activation="hardswish", **NORM, rngs=rngs))
        self.features = Sequential(layers)
        linear_init = {"kernel_init": nnx.initializers.normal(0.01), "bias_init": nnx.initializers.zeros_init()}  # torchvision's
        self.classifier = Sequential([
            nnx.Linear(lastconv_output_channels, LAST_CHANNEL[variant], **linear_init, rngs=rngs),
            jax.nn.hard_swish,
            nnx.Dropout(dropout, rngs=rngs),
            nnx.Linear(LAST_CHANNEL[variant], num_classes, **linear_init, rngs=rngs),
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        x = x.mean(axis=(1, 2))
        return self.classifier(x)
