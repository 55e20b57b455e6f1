"""The torchvision twins against torchvision itself: every registry model imported from torchvision has a
PyTorch twin whose state dict is torchvision's key for key, loads strictly both ways, and computes what
torchvision's own class computes. (Twin against twin is the parity suite's job.)"""

import pytest
import torch

import zoo
from zoo.backends import get_backend
from zoo.registry import model_info
from zoo.testing import assert_close, example_batch, parity_spec

torchvision = pytest.importorskip("torchvision", reason="torchvision is a dev dependency: pip install -e '.[dev]'")
TV_MODELS = [n for n in zoo.list_models() if model_info(n).get("import_from", "").startswith("torchvision:")]
TB = get_backend("torch")


def torchvision_model(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.get_model(model_info(name)["import_from"].partition(":")[2], weights=None)


@pytest.mark.parametrize("name", TV_MODELS)
def test_state_dict_is_torchvisions_key_for_key(name):
    ours, theirs = zoo.load(name, backend="torch", pretrained=False, seed=0), torchvision_model(name, seed=1)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)  # same names, same order
    assert {k: (v.shape, v.dtype) for k, v in ours_state.items()} == {k: (v.shape, v.dtype) for k, v in theirs_state.items()}
    theirs.load_state_dict(ours_state, strict=True)
    ours.load_state_dict(torchvision_model(name, seed=2).state_dict(), strict=True)


@pytest.mark.parametrize("name", TV_MODELS)
def test_outputs_are_torchvisions(name, record_measurement):
    """Same weights, same batch: eval-mode logits and train-mode outputs (BatchNorm on batch statistics,
    dropout off) agree with torchvision's class, and so do the running statistics after the train step."""
    theirs = torchvision_model(name, seed=3)
    ours = zoo.load(name, backend="torch", pretrained=False, seed=0)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = TB.to_input(example_batch(parity_spec(ours.zoo_spec), 2, seed=0)[0], ours.zoo_spec)
    with torch.no_grad():
        worst = assert_close(ours.eval()(x).numpy(), theirs.eval()(x).numpy(), f"{name} eval logits vs torchvision")
        for module in (*ours.modules(), *theirs.modules()):  # train-mode normalisation, no random drops
            if isinstance(module, torch.nn.Dropout) or type(module).__name__ == "StochasticDepth":
                module.p = 0.0
        worst = max(worst, assert_close(ours.train()(x).numpy(), theirs.train()(x).numpy(), f"{name} train-mode outputs vs torchvision"))
    for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert_close(a.numpy(), b.numpy(), f"{name} {key} after a train-mode forward")
    record_measurement(name, "vs_torchvision", worst)
