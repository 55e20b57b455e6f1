import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    """Flatten, Linear, ReLU, Linear. Input: (N, C, H, W)."""

    def __init__(self, in_features: int = 784, hidden_features: int = 256, num_classes: int = 10):
        super().__init__()
        self.layer1 = nn.Linear(in_features, hidden_features)
        self.layer2 = nn.Linear(hidden_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = F.relu(self.layer1(x))
        return self.layer2(x)
