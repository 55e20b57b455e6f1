"""torchvision's ResNet (resnet18, resnet50, ...): the Flax twin of `zoo/torch_models/tv_resnet.py`, at the same
paths, with initialisers equivalent to torchvision's. NHWC."""

import jax
from flax import nnx

from .layers import KAIMING_FAN_OUT, BatchNorm, Sequential, uniform


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, *, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(in_planes, out_planes, (3, 3), strides=stride, padding=((1, 1), (1, 1)), use_bias=False,
                    kernel_init=KAIMING_FAN_OUT, rngs=rngs)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, *, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(in_planes, out_planes, (1, 1), strides=stride, padding="VALID", use_bias=False,
                    kernel_init=KAIMING_FAN_OUT, rngs=rngs)


class BasicBlock(nnx.Module):
    """Two 3x3 conv + BatchNorm (stride on the first) and a residual connection: the identity, or `downsample`
    (1x1 conv + BN) when the shape changes."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Sequential | None = None, *, rngs: nnx.Rngs):
        self.conv1 = conv3x3(inplanes, planes, stride, rngs=rngs)
        self.bn1 = BatchNorm(planes)
        self.conv2 = conv3x3(planes, planes, rngs=rngs)
        self.bn2 = BatchNorm(planes)
        self.downsample = downsample

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return nnx.relu(out + identity)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (with the stride: ResNet v1.5), 1x1 expand by 4, each with BatchNorm, and a residual
    connection: the identity, or `downsample` (1x1 conv + BN) when the shape changes."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Sequential | None = None, *, rngs: nnx.Rngs):
        self.conv1 = conv1x1(inplanes, planes, rngs=rngs)
        self.bn1 = BatchNorm(planes)
        self.conv2 = conv3x3(planes, planes, stride, rngs=rngs)
        self.bn2 = BatchNorm(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion, rngs=rngs)
        self.bn3 = BatchNorm(planes * self.expansion)
        self.downsample = downsample

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = nnx.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return nnx.relu(out + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nnx.Module):
    """7x7 stride-2 stem conv + BN + ReLU, 3x3 stride-2 max-pool, four stages `layer1`..`layer4` of `block`s
    (64, 128, 256, 512 planes; stride 2 from the second on), global average pool, `fc`."""

    def __init__(self, block: str, layers: list[int], num_classes: int = 1000, *, rngs: nnx.Rngs):
        if block not in BLOCKS:
            raise ValueError(f"ResNet block must be one of {sorted(BLOCKS)}, got {block!r}")
        block_cls = BLOCKS[block]
        self.inplanes = 64
        self.conv1 = nnx.Conv(3, self.inplanes, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False,
                              kernel_init=KAIMING_FAN_OUT, rngs=rngs)
        self.bn1 = BatchNorm(self.inplanes)
        self.layer1 = self._make_layer(block_cls, 64, layers[0], rngs=rngs)
        self.layer2 = self._make_layer(block_cls, 128, layers[1], stride=2, rngs=rngs)
        self.layer3 = self._make_layer(block_cls, 256, layers[2], stride=2, rngs=rngs)
        self.layer4 = self._make_layer(block_cls, 512, layers[3], stride=2, rngs=rngs)
        bound = (512 * block_cls.expansion) ** -0.5  # PyTorch's default initialisation, as torchvision
        self.fc = nnx.Linear(512 * block_cls.expansion, num_classes, kernel_init=uniform(bound), bias_init=uniform(bound), rngs=rngs)

    def _make_layer(self, block_cls: type, planes: int, blocks: int, stride: int = 1, *, rngs: nnx.Rngs) -> Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block_cls.expansion:
            downsample = Sequential([conv1x1(self.inplanes, planes * block_cls.expansion, stride, rngs=rngs),
                                     BatchNorm(planes * block_cls.expansion)])
        layers = [block_cls(self.inplanes, planes, stride, downsample, rngs=rngs)]
        self.inplanes = planes * block_cls.expansion
        for _ in range(1, blocks):
            layers.append(block_cls(self.inplanes, planes, rngs=rngs))
        return Sequential(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf, as torch
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = x.mean(axis=(1, 2))
        return self.fc(x)
