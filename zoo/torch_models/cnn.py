import torch
from torch import nn
from torch.nn import functional as F


class CNN(nn.Module):
    """conv5x5 32, max-pool, conv5x5 64, max-pool, fc 1024-512-10. Input: (N, C, 28, 28)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5)
        self.fc1 = nn.Linear(64 * 4 * 4, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), kernel_size=2, stride=2)
        x = F.max_pool2d(F.relu(self.conv2(x)), kernel_size=2, stride=2)
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)
