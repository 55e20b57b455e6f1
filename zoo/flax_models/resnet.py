import jax
from flax import nnx

from .layers import BatchNorm


class BasicBlock(nnx.Module):
    """Two 3x3 conv + BatchNorm layers with a residual connection (1x1 conv + BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_channels, out_channels, (3, 3), strides=stride, padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn1 = BatchNorm(out_channels)
        self.conv2 = nnx.Conv(out_channels, out_channels, (3, 3), strides=1, padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn2 = BatchNorm(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut_conv = nnx.Conv(in_channels, out_channels, (1, 1), strides=stride, padding="VALID", use_bias=False, rngs=rngs)
            self.shortcut_bn = BatchNorm(out_channels)
        else:
            self.shortcut_conv = None
            self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return nnx.relu(x + shortcut)


class ResNet(nnx.Module):
    """Stem conv3x3, stages of basic blocks (stride 2 between stages), global average pool, dropout, fc."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32, 64),
        blocks_per_stage: int = 2,
        dropout: float = 0.1,
        *,
        rngs: nnx.Rngs,
    ):
        self.stem_conv = nnx.Conv(in_channels, widths[0], (3, 3), strides=1, padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.stem_bn = BatchNorm(widths[0])
        blocks = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, rngs=rngs))
                channels = width
        self.blocks = nnx.List(blocks)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.fc = nnx.Linear(channels, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem_bn(self.stem_conv(x)))
        for block in self.blocks:
            x = block(x)
        x = x.mean(axis=(1, 2))
        x = self.dropout(x)
        return self.fc(x)
