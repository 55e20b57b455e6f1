"""The Flax recurrent layer against torch.nn.LSTM / torch.nn.GRU, one layer and two, both directions,
with mixed lengths (packed sequences on the torch side)."""

import numpy as np
import pytest
import torch
from flax import nnx
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from zoo.convert import flax_to_torch, torch_to_flax
from zoo.flax_models.layers import RNN, reverse_padded
from zoo.testing import assert_close


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_rnn_matches_torch_with_lengths(mode, bidirectional, num_layers):
    torch.manual_seed(0)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[mode]
    reference = cls(6, 5, num_layers, batch_first=True, bidirectional=bidirectional).eval()
    layer = RNN(mode, 6, 5, num_layers, bidirectional=bidirectional, rngs=nnx.Rngs(0))
    layer.eval()
    torch_to_flax(reference.state_dict(), layer)
    lengths = np.array([1, 9, 4, 7, 9, 2])
    x = np.random.default_rng(1).normal(size=(6, 9, 6)).astype(np.float32)
    x[np.arange(9)[None, :] >= lengths[:, None]] = 99.0  # padding content must not matter
    with torch.no_grad():
        packed = pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False)
        out, state = reference(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=9)
    h_n = state[0] if mode == "lstm" else state
    got_out, got_h = layer(x, lengths)
    assert_close(np.asarray(got_out), out.numpy(), f"{mode} outputs")
    assert_close(np.asarray(got_h), h_n.numpy(), f"{mode} final states")
    back = flax_to_torch(layer)
    assert all(back[k].tobytes() == v.numpy().tobytes() for k, v in reference.state_dict().items())


def test_reverse_padded_reverses_only_the_real_tokens():
    x = np.array([[1, 2, 3, 0], [4, 5, 0, 0], [6, 0, 0, 0]])[..., None]
    got = np.asarray(reverse_padded(x, np.array([3, 2, 1])))[..., 0]
    assert got.tolist() == [[3, 2, 1, 0], [5, 4, 0, 0], [6, 0, 0, 0]]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_twin_equals_plain_packed_sequences(cell):
    """The zoo's torch classifier (fused kernel, masks) gives what nn.LSTM/GRU on packed sequences gives,
    in eval and in train mode (dropout 0), gradients included."""
    from zoo.torch_models.rnn import RNNClassifier

    torch.manual_seed(0)
    model = RNNClassifier(cell, vocab_size=50, embed_dim=6, hidden_size=5, num_layers=2)
    lengths = torch.tensor([1, 9, 4, 7, 9, 2])
    ids = torch.randint(2, 50, (6, 9))
    ids[torch.arange(9)[None, :] >= lengths[:, None]] = 0

    def packed_reference(m):
        packed = pack_padded_sequence(m.embedding(ids), lengths, batch_first=True, enforce_sorted=False)
        _, state = m.rnn(packed)
        h_n = state[0] if cell == "lstm" else state
        return m.fc(torch.cat([h_n[-2], h_n[-1]], dim=1))

    for train in (False, True):
        model.train(train)
        ours, reference = model(ids), packed_reference(model)
        assert_close(ours.detach().numpy(), reference.detach().numpy(), f"{cell} train={train}")
        g_ours = torch.autograd.grad(ours.sum(), list(model.parameters()))
        g_ref = torch.autograd.grad(reference.sum(), list(model.parameters()))
        for (name, _), a, b in zip(model.named_parameters(), g_ours, g_ref, strict=True):
            assert_close(a.numpy(), b.numpy(), f"{cell} grad {name}")


def test_forget_bias_starts_every_lstm_forget_gate_at_the_same_value_in_both_twins():
    """`forget_bias=1.0`: the forget rows of every `bias_ih` are 1 and of every `bias_hh` 0 (so the gate starts at
    sigmoid(1)), in each layer and direction, in both frameworks; the other rows keep the default initialisation.
    Catches: the wrong gate's rows (i, f, g, o order), one bias only, one twin only, a GRU accepting it."""
    import zoo
    from zoo.backends import get_backend

    hidden = zoo.registry.get_spec("lstm-imdb").config["hidden_size"]
    forget = slice(hidden, 2 * hidden)
    for backend in ("torch", "jax"):
        state = get_backend(backend).state_to_numpy(zoo.load("lstm-imdb", backend=backend, pretrained=False, forget_bias=1.0))
        plain = get_backend(backend).state_to_numpy(zoo.load("lstm-imdb", backend=backend, pretrained=False))
        biases = [k for k in state if k.startswith("rnn.bias_")]
        assert len(biases) == 8  # 2 layers x 2 directions x (ih, hh)
        for k in biases:
            assert (state[k][forget] == (1.0 if "bias_ih" in k else 0.0)).all(), (backend, k)
            for rows in (slice(0, hidden), slice(2 * hidden, 4 * hidden)):
                np.testing.assert_array_equal(state[k][rows], plain[k][rows])
        with pytest.raises(ValueError, match="only an LSTM has a forget gate"):
            zoo.load("gru-imdb", backend=backend, pretrained=False, forget_bias=1.0)
