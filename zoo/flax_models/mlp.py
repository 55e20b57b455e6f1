import jax
from flax import nnx


class MLP(nnx.Module):
    """Flatten, Linear, ReLU, Linear. Input: (N, H, W, C)."""

    def __init__(self, in_features: int = 784, hidden_features: int = 256, num_classes: int = 10, *, rngs: nnx.Rngs):
        self.layer1 = nnx.Linear(in_features, hidden_features, rngs=rngs)
        self.layer2 = nnx.Linear(hidden_features, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # flatten in C,H,W order, as PyTorch does
        x = nnx.relu(self.layer1(x))
        return self.layer2(x)
