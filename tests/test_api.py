import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import zoo
from zoo.registry import UnknownModelError


def test_import_zoo_is_light():
    heavy = "('torch', 'jax', 'flax', 'huggingface_hub', 'datasets')"
    code = f"import sys, zoo; zoo.list_models(); print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownModelError, match="Did you mean: cnn-mnist"):
        zoo.model_info("cnn-mnst")
    with pytest.raises(UnknownModelError, match="Did you mean"):
        zoo.load("mlp-mnistt", backend="torch")


def test_unknown_backend():
    with pytest.raises(ValueError, match="Unknown backend 'tensorflow'"):
        zoo.load("cnn-mnist", backend="tensorflow", pretrained=False)


def test_models_come_back_native_in_eval_mode_with_spec():
    import torch
    from flax import nnx

    t = zoo.load("resnet-mnist", backend="torch", pretrained=False)
    j = zoo.load("resnet-mnist", backend="jax", pretrained=False)
    assert isinstance(t, torch.nn.Module) and not t.training
    assert isinstance(j, nnx.Module) and j.blocks[0].bn1.use_running_average and j.dropout.deterministic
    assert t.zoo_spec.labels == j.zoo_spec.labels == [str(i) for i in range(10)]


def test_pretrained_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    import json

    import zoo.registry as registry

    with pytest.raises(LookupError, match="has no pretrained tag 'nope' \\(available tags: v1\\)"):
        zoo.load("cnn-mnist.nope", backend="torch")
    data = json.loads(registry.REGISTRY_PATH.read_text())
    data["models"]["cnn-mnist"].update(default_tag=None, weights={})
    scratch = tmp_path / "registry.json"
    scratch.write_text(json.dumps(data))
    monkeypatch.setattr(registry, "REGISTRY_PATH", scratch)  # a registry entry that has shipped nothing yet
    with pytest.raises(LookupError, match="has no pretrained default weights .*pretrained=False"):
        zoo.load("cnn-mnist", backend="jax")
    assert zoo.load("cnn-mnist", backend="jax", pretrained=False) is not None


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "cnn.safetensors"
    zoo.save(zoo.load("cnn-mnist", backend="jax", pretrained=False, seed=3), path)
    return str(path)


def test_pipeline_accepts_every_input_layout_and_agrees_across_backends(cnn_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    torch_pipe = zoo.pipeline(cnn_path, backend="torch")
    jax_pipe = zoo.pipeline(f"file://{cnn_path}", backend="jax")
    reference = torch_pipe(images)
    assert reference.probabilities.shape == (5, 10)
    np.testing.assert_allclose(reference.probabilities.sum(1), 1.0, rtol=1e-5)
    for variant in (images, images[..., None], list(images), [Image.fromarray(a) for a in images]):
        for pipe in (torch_pipe, jax_pipe):
            pred = pipe(variant)
            assert pred.labels == reference.labels
            np.testing.assert_allclose(pred.logits, reference.logits, atol=1e-5, rtol=1e-5)
    single = jax_pipe(images[0])
    assert single.labels == reference.labels[:1]


def test_pipeline_rejects_wrong_inputs(cnn_path):
    pipe = zoo.pipeline(cnn_path, backend="torch")
    with pytest.raises(TypeError, match="uint8"):
        pipe(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"got \(2, 32, 32, 1\)"):
        pipe(np.zeros((2, 32, 32), np.uint8))


def test_save_needs_a_spec():
    from torch import nn

    with pytest.raises(ValueError, match="zoo_spec"):
        zoo.save(nn.Linear(2, 2), "/tmp/never-written.safetensors")


def test_text_pipeline_strings_to_labels_same_ids_and_logits_in_both_backends(tmp_path):
    from zoo.backends import get_backend

    path = tmp_path / "lstm.safetensors"
    zoo.save(zoo.load("lstm-imdb", backend="torch", pretrained=False, seed=2), path)
    torch_pipe, jax_pipe = zoo.pipeline(str(path), backend="torch"), zoo.pipeline(str(path), backend="jax")
    assert torch_pipe.spec.tokenizer_json, "the tokenizer travels inside the checkpoint"
    reviews = ["A wonderful film.<br /><br />I loved every minute!", "", "terrible " * 400, "Meh."]
    ids = torch_pipe.preprocess(reviews)
    assert (ids == jax_pipe.preprocess(reviews)).all()
    lengths = (ids != 0).sum(1)
    assert lengths.tolist()[1] == 1 and lengths.max() == 256 and ids.shape == (4, 256)  # empty -> [UNK]; head+tail cut
    a, b = torch_pipe(reviews), jax_pipe(reviews)
    assert a.labels == b.labels and set(a.labels) <= {"neg", "pos"}
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(get_backend("jax").logits(jax_pipe.model, ids), a.logits, atol=1e-5, rtol=1e-5)


def test_head_tail_truncation_keeps_the_end():
    from zoo.text import truncate

    ids = list(range(300))
    kept = truncate(ids, 256, "head_tail", 64)
    assert kept[:64] == ids[:64] and kept[64:] == ids[-192:] and len(kept) == 256
    assert truncate(ids, 256, "head", 64) == ids[:256]
