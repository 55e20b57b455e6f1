"""The converter is a table of rules per layer kind: architectures built from known layers convert
with no new converter code, and a plain PyTorch class with the same names loads a zoo checkpoint."""

import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn
from torch.nn import functional as F

import zoo
from zoo.checkpoint import CheckpointError
from zoo.convert import flax_to_torch, torch_to_flax
from zoo.flax_models.layers import BatchNorm


class TinyTorch(nn.Module):
    """A new architecture, defined only here: embedding, conv, BN, LayerNorm, attention, linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.heads = nn.ModuleList([nn.Linear(8 + 4, 3), nn.Linear(3, 2, bias=False)])

    def forward(self, ids, image):
        h = self.norm(self.embed(ids))
        h, _ = self.attn(h, h, h, need_weights=False)
        c = F.relu(self.bn(self.conv(image))).mean(dim=(2, 3))
        x = torch.cat([h.mean(1), c], dim=1)
        return self.heads[1](F.relu(self.heads[0](x)))


class TinyFlax(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(50, 8, rngs=rngs)
        self.conv = nnx.Conv(1, 4, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.bn = BatchNorm(4)
        self.norm = nnx.LayerNorm(8, epsilon=1e-5, use_fast_variance=False, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(2, 8, decode=False, rngs=rngs)
        self.heads = nnx.List([nnx.Linear(8 + 4, 3, rngs=rngs), nnx.Linear(3, 2, use_bias=False, rngs=rngs)])

    def __call__(self, ids, image):
        h = self.norm(self.embed(ids))
        h = self.attn(h)
        c = nnx.relu(self.bn(self.conv(image))).mean(axis=(1, 2))
        x = jnp_concat([h.mean(1), c])
        return self.heads[1](nnx.relu(self.heads[0](x)))


def jnp_concat(parts):
    import jax.numpy as jnp

    return jnp.concatenate(parts, axis=1)


def test_new_architecture_converts_both_ways_without_converter_code():
    torch.manual_seed(0)
    tm = TinyTorch().eval()
    with torch.no_grad():
        for p in tm.parameters():  # non-trivial values everywhere, biases and norms included
            p.add_(torch.randn_like(p) * 0.1)
        tm.bn.running_mean.normal_()
        tm.bn.running_var.uniform_(0.5, 2.0)
    fm = TinyFlax(nnx.Rngs(0))
    fm.eval()
    torch_to_flax(tm.state_dict(), fm)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(3, 5))
    image = rng.normal(size=(3, 6, 6, 1)).astype(np.float32)
    with torch.no_grad():
        expected = tm(torch.from_numpy(ids), torch.from_numpy(image.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(fm(ids, image))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    back = flax_to_torch(fm)
    for key, value in tm.state_dict().items():
        assert back[key].tobytes() == value.numpy().tobytes(), key
    assert set(back) == set(tm.state_dict())


def test_converter_is_strict():
    fm = TinyFlax(nnx.Rngs(0))
    state = {k: v.numpy() for k, v in TinyTorch().state_dict().items()}
    state.pop("conv.bias")
    state["extra"] = np.zeros(1, np.float32)
    state["heads.0.weight"] = np.zeros((3, 11), np.float32)
    with pytest.raises(CheckpointError) as info:
        torch_to_flax(state, fm, source="my.safetensors")
    message = str(info.value)
    assert "my.safetensors" in message and "missing keys: conv.bias" in message
    assert "unexpected keys: extra" in message and "heads.0.weight: shape (3, 11), expected (3, 12)" in message


def test_unknown_layer_kind_is_named():
    class Custom(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(np.zeros(3, np.float32))

    class Holder(nnx.Module):
        def __init__(self):
            self.inner = Custom()

    with pytest.raises(TypeError, match="No conversion rule for layer kind Custom at inner"):
        flax_to_torch(Holder())


class ArticleCNN(nn.Module):
    """The tutorial's own PyTorch CNN, written independently of zoo."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5)
        self.fc1 = nn.Linear(1024, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 1024)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def test_plain_pytorch_class_loads_a_checkpoint_written_from_jax(tmp_path):
    from safetensors.torch import load_file

    jax_model = zoo.load("cnn-mnist", backend="jax", pretrained=False, seed=7)
    zoo.save(jax_model, tmp_path / "cnn.safetensors")
    article = ArticleCNN().eval()
    article.load_state_dict(load_file(str(tmp_path / "cnn.safetensors")), strict=True)
    x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
    with torch.no_grad():
        expected = article(torch.from_numpy(x.transpose(0, 3, 1, 2).copy(order="C"))).numpy()
    np.testing.assert_allclose(np.asarray(jax_model(x)), expected, atol=1e-5, rtol=1e-5)
