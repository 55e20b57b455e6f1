import jax
from flax import nnx

from .layers import max_pool


class CNN(nnx.Module):
    """conv5x5 32, max-pool, conv5x5 64, max-pool, fc 1024-512-10. Input: (N, 28, 28, C)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_channels, 32, kernel_size=(5, 5), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(5, 5), padding="VALID", rngs=rngs)
        self.fc1 = nnx.Linear(64 * 4 * 4, 512, rngs=rngs)
        self.fc2 = nnx.Linear(512, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = max_pool(nnx.relu(self.conv1(x)), 2)
        x = max_pool(nnx.relu(self.conv2(x)), 2)
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # flatten in C,H,W order, as PyTorch does
        x = nnx.relu(self.fc1(x))
        return self.fc2(x)
