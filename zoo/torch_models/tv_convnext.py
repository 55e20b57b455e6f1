"""torchvision's ConvNeXt (`torchvision.models.convnext`) without torchvision: the same modules built in the same
order, so the state dict is torchvision's key for key and a seed gives torchvision's initial weights."""

import torch
from torch import nn
from torch.nn import functional as F

from .layers import StochasticDepth


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


class Permute(nn.Module):
    """torchvision's `Permute`: the input with its dimensions reordered."""

    def __init__(self, dims: list[int]):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class CNBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, Linear 4x, exact GELU, Linear (channels-last), scaled per channel by
    `layer_scale`, stochastic depth, residual."""

    def __init__(self, dim: int, layer_scale: float, stochastic_depth_prob: float):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(in_features=dim, out_features=4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(in_features=4 * dim, out_features=dim, bias=True),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.layer_scale * self.block(x)
        result = self.stochastic_depth(result)
        return result + x


class ConvNeXt(nn.Module):
    """Stem (4x4 stride-4 conv, LayerNorm2d), stages of `depths[i]` CNBlocks of width `dims[i]` with LayerNorm2d and a
    2x2 stride-2 conv between stages, global average pool, classifier (LayerNorm2d, flatten, Linear). Stochastic depth
    grows linearly from 0 at the first block to `stochastic_depth_prob` at the last."""

    def __init__(self, depths: list[int], dims: list[int], stochastic_depth_prob: float = 0.1, layer_scale: float = 1e-6,
                 num_classes: int = 1000):
        super().__init__()
        if not depths or len(depths) != len(dims):
            raise ValueError(f"ConvNeXt needs one depth per stage width, got depths={depths}, dims={dims}")
        layers = [
            nn.Sequential(  # stem: torchvision's Conv2dNormActivation without activation
                nn.Conv2d(3, dims[0], kernel_size=4, stride=4, padding=0, bias=True),
                LayerNorm2d(dims[0], eps=1e-6),
            )
        ]
        total_stage_blocks = sum(depths)
        stage_block_id = 0
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            stage = []
            for _ in range(depth):
                sd_prob = stochastic_depth_prob * stage_block_id / (total_stage_blocks - 1.0)
                stage.append(CNBlock(dim, layer_scale, sd_prob))
                stage_block_id += 1
            layers.append(nn.Sequential(*stage))
            if i + 1 < len(dims):  # downsampling
                layers.append(
                    nn.Sequential(
                        LayerNorm2d(dim, eps=1e-6),
                        nn.Conv2d(dim, dims[i + 1], kernel_size=2, stride=2),
                    )
                )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            LayerNorm2d(dims[-1], eps=1e-6),
            nn.Flatten(1),
            nn.Linear(dims[-1], num_classes),
        )

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = self.classifier(x)
        return x
