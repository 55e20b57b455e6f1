"""Fine-tuning across frameworks: new heads, specs that describe the model built, frozen parameters,
best-on-validation runs, `zoo finetune` on every source kind, and a file fine-tuned in one backend used
in the other."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import zoo
from zoo.backends import get_backend
from zoo.data.sources import load_source
from zoo.optim import OptimizerConfig
from zoo.testing import example_batch
from zoo.train.freeze import Freeze

BACKENDS = ("torch", "jax")
OTHER = {"torch": "jax", "jax": "torch"}


def state(model, backend):
    return get_backend(backend).state_to_numpy(model)


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_head_keeps_every_other_tensor_and_the_spec_says_so(backend):
    base = state(zoo.load("cnn-mnist", backend=backend), backend)
    model = zoo.load("cnn-mnist", backend=backend, labels=["cat", "dog", "eel"], seed=7)
    got = state(model, backend)
    assert got["fc2.weight"].shape == (3, 512) and got["fc2.bias"].shape == (3,)
    assert all(np.array_equal(got[k], base[k]) for k in base if not k.startswith("fc2."))
    spec = model.zoo_spec
    assert (spec.config["num_classes"], spec.labels, spec.finetuned_from) == (3, ["cat", "dog", "eel"], "cnn-mnist.v1")
    again = state(zoo.load("cnn-mnist", backend=backend, labels=["cat", "dog", "eel"], seed=7), backend)
    other = state(zoo.load("cnn-mnist", backend=backend, labels=["cat", "dog", "eel"], seed=8), backend)
    assert np.array_equal(again["fc2.weight"], got["fc2.weight"]), "the fresh head is seeded"
    assert not np.array_equal(other["fc2.weight"], got["fc2.weight"])
    assert zoo.load("cnn-mnist", backend=backend, num_classes=4).zoo_spec.labels == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="3 labels given, but num_classes=4"):
        zoo.load("cnn-mnist", backend=backend, labels=["a", "b", "c"], num_classes=4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_labels_in_another_order_permute_the_head(backend):
    base = state(zoo.load("mlp-mnist", backend=backend), backend)
    order = ["3", "1", "4", "0", "5", "9", "2", "6", "8", "7"]
    model = zoo.load("mlp-mnist", backend=backend, labels=order)
    got = state(model, backend)
    rows = [int(label) for label in order]
    assert np.array_equal(got["layer2.weight"], base["layer2.weight"][rows])
    assert np.array_equal(got["layer2.bias"], base["layer2.bias"][rows])
    assert model.zoo_spec.labels == order and model.zoo_spec.finetuned_from is None
    from zoo.demo import SAMPLES

    digits = np.load(SAMPLES)["images"]
    assert zoo.pipeline(model)(digits).labels == zoo.pipeline(zoo.load("mlp-mnist", backend=backend))(digits).labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_then_load_in_the_other_backend_rebuilds_the_model_exactly(backend, tmp_path):
    cases = {"head": zoo.load("resnet-mnist", backend=backend, labels=["a", "b"], dropout=0.3),
             "scratch": zoo.load("cnn-mnist", backend=backend, pretrained=False, num_classes=5)}  # wrote 10 classes before
    for label, model in cases.items():
        path = tmp_path / f"{label}.safetensors"
        zoo.save(model, path)
        back = zoo.load(str(path), backend=OTHER[backend])
        for field in ("arch", "config", "labels", "preprocessing", "classifier", "finetuned_from", "task"):
            assert getattr(back.zoo_spec, field) == getattr(model.zoo_spec, field), f"{label}: {field}"
        a, b = state(model, backend), state(back, OTHER[backend])
        assert all(a[k].tobytes() == b[k].tobytes() for k in a), label
    assert cases["head"].zoo_spec.config["dropout"] == 0.3 and cases["scratch"].zoo_spec.config["num_classes"] == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_parameters_and_their_batchnorm_statistics_stay_put(backend):
    b = get_backend(backend)
    model = zoo.load("resnet-mnist", backend=backend, labels=["a", "b", "c"], dropout=0.0)
    before = b.state_to_numpy(model)
    trainer = b.trainer(model, OptimizerConfig(name="adamw", lr=1e-2, weight_decay=1e-2), freeze=Freeze.from_config("backbone", "fc"))
    for seed in range(3):
        trainer.step(*example_batch(model.zoo_spec, 8, seed=seed))
    after = b.state_to_numpy(model)
    moved = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert moved == ["fc.bias", "fc.weight"], moved  # running means, variances and counters of the backbone included
    trainable = before["fc.weight"].size + before["fc.bias"].size
    if backend == "torch":
        slots = [v for s in trainer.optimizer.state.values() for v in s.values() if v.ndim > 0]
    else:
        import jax

        slots = [v for v in jax.tree.leaves(trainer.optimizer.opt_state) if getattr(v, "ndim", 0) > 0]
    assert sum(int(np.prod(v.shape)) for v in slots) == 2 * trainable, "optimizer state for the head only (AdamW: two moments)"

    partial = zoo.load("resnet-mnist", backend=backend, dropout=0.0)
    frozen = Freeze.from_config(["stem_conv", "stem_bn", "blocks.0"], "fc")
    trainer = b.trainer(partial, OptimizerConfig(name="sgd", lr=1e-2), freeze=frozen)
    start = b.state_to_numpy(partial)
    trainer.step(*example_batch(partial.zoo_spec, 8, seed=0))
    end = b.state_to_numpy(partial)
    assert all(np.array_equal(start[k], end[k]) for k in start if k.startswith(("stem_", "blocks.0.")))
    assert not np.array_equal(start["blocks.1.bn1.running_mean"], end["blocks.1.bn1.running_mean"])
    assert not np.array_equal(start["blocks.1.conv1.weight"], end["blocks.1.conv1.weight"])


@pytest.fixture(scope="module")
def sources(tmp_path_factory, data_dir):
    """Small real slices in every source layout: USPS (Parquet, image folder), Rotten Tomatoes (Parquet with its
    own validation split, CSV with string labels, JSON lines)."""
    root = tmp_path_factory.mktemp("sources")
    usps = {s: pq.read_table(data_dir / "usps" / f"{s}.parquet") for s in ("train", "test")}
    usps = {"train": usps["train"].slice(0, 400), "test": usps["test"].slice(0, 200)}
    (root / "usps").mkdir()
    for split, table in usps.items():
        pq.write_table(table, root / "usps" / f"{split}.parquet")
        for row, (cell, label) in enumerate(zip(table["image"].to_pylist(), table["label"].to_pylist(), strict=True)):
            folder = root / "usps-folder" / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{row:04d}.png").write_bytes(cell["bytes"])
    (root / "rt").mkdir()
    records = {}
    for split, n in (("train", 200), ("validation", 60), ("test", 60)):
        table = pq.read_table(data_dir / "rotten_tomatoes" / f"{split}.parquet")
        table = pa.concat_tables([table.slice(0, n // 2), table.slice(table.num_rows - n // 2, n // 2)])  # both labels
        pq.write_table(table, root / "rt" / f"{split}.parquet")
        pairs = zip(table["text"].to_pylist(), table["label"].to_pylist(), strict=True)
        records[split] = [{"text": t, "label": ["neg", "pos"][lab]} for t, lab in pairs]
    import csv

    with open(root / "rt.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows(records["train"])
    (root / "rt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records["train"]))
    return root


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["usps-parquet", "usps-folder", "rt-parquet", "rt-csv", "rt-jsonl"])
def test_zoo_finetune_on_each_source_kind_then_the_other_backend(sources, kind, backend, tmp_path):
    from zoo.cli import main

    data = {"usps-parquet": sources / "usps", "usps-folder": sources / "usps-folder", "rt-parquet": sources / "rt",
            "rt-csv": sources / "rt.csv", "rt-jsonl": sources / "rt.jsonl"}[kind]
    base = "cnn-mnist" if kind.startswith("usps") else "lstm-imdb"  # pretrained in JAX and in PyTorch
    extra = ["--resize", "mnist_frame"] if base == "cnn-mnist" else []
    out = tmp_path / "run"
    assert main(["finetune", base, "--data", str(data), "--backend", backend, "--epochs", "2", "--freeze", "backbone",
                 "--batch-size", "32", "--out", str(out), "--no-progress", "--seed", "1", *extra]) == 0
    summary = json.loads((out / "summary.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda h: (h["val_accuracy"], -h["val_loss"], -h["epoch"]))
    origin = f"{base}.{zoo.registry.model_info(base)['default_tag']}"  # the weights `base` names today
    assert summary["best_epoch"] == best["epoch"] and summary["finetuned_from"] == origin
    assert (out / "final.safetensors").read_bytes() == (out / f"epoch-{best['epoch']}.safetensors").read_bytes()
    tuned = zoo.load(str(out / "final.safetensors"), backend=OTHER[backend])
    spec = tuned.zoo_spec
    assert spec.name == f"{base}-finetuned" and spec.finetuned_from == origin
    test = load_source(str(data), kind=spec.preprocessing["kind"]).test
    if test is None:  # a single-file source: no test split, so no test figures at all
        assert summary["test_accuracy"] is None and summary["test_accuracy_per_class"] is None
    else:  # per class: keyed by label name, in label order; weighs back to the total
        per_class = summary["test_accuracy_per_class"]
        counts = {spec.labels[c]: n for c, n in enumerate(np.bincount(np.asarray(test.labels), minlength=len(spec.labels))) if n}
        assert list(per_class) == list(counts)
        assert sum(per_class[k] * n for k, n in counts.items()) / sum(counts.values()) == pytest.approx(summary["test_accuracy"], abs=1e-12)
    if base == "cnn-mnist":
        assert spec.preprocessing["adapt"] == {"resize": "mnist_frame", "colour": None} and spec.labels == [str(i) for i in range(10)]
        import io

        from PIL import Image

        raw = pq.read_table(sources / "usps" / "test.parquet")
        images = [Image.open(io.BytesIO(c["bytes"])) for c in raw["image"].to_pylist()]  # 16x16: framed by the recorded rule
        labels = np.asarray(raw["label"].to_pylist())
        assert summary["data"]["description"]
    else:
        assert spec.labels == ["neg", "pos"] and 0 < summary["data"]["unk_rate"] < 0.2
        raw = pq.read_table(sources / "rt" / "test.parquet") if kind == "rt-parquet" else None
        if raw is None:
            assert summary["test_accuracy"] is None  # CSV / JSON lines: train only, validation held out
            return
        images, labels = raw["text"].to_pylist(), np.asarray(raw["label"].to_pylist())
    there = zoo.pipeline(tuned)(images)
    here = zoo.pipeline(zoo.load(str(out / "final.safetensors"), backend=backend))(images)
    assert (there.indices == here.indices).mean() >= 0.999
    np.testing.assert_allclose(there.logits, here.logits, atol=1e-4, rtol=1e-4)
    assert abs((there.indices == labels).mean() - summary["test_accuracy"]) < 1e-9, "test measured on the kept epoch"


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_finetuning_trajectories_agree_across_frameworks(sources, optimizer, tmp_path):
    """30 steps from the pretrained cnn-mnist on framed USPS digits, conv1 frozen, the rest of the backbone at
    0.1 x lr: per-step losses agree, as for training from scratch."""
    from zoo.train import TrainConfig, prepare_model_and_data

    cfg = OptimizerConfig(name=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3, weight_decay=1e-4)
    losses, moved = {}, {}
    for backend in BACKENDS:
        train_cfg = TrainConfig(model="cnn-mnist", backend=backend, init_from="cnn-mnist", data={"source": str(sources / "usps")},
                                adapt={"resize": "mnist_frame"}, freeze=["conv1"], backbone_lr_scale=0.1)
        model, data = prepare_model_and_data(train_cfg, backend)
        b = get_backend(backend)
        trainer = b.trainer(model, cfg, freeze=Freeze.from_config(["conv1"], "fc2"), backbone_lr_scale=0.1)
        from zoo.data.pipeline import batches

        before = b.state_to_numpy(model)
        steps = zip(range(30), batches(data["train"], model.zoo_spec, 32, seed=1), strict=False)
        losses[backend] = [trainer.step(x, y) for _, (x, y) in steps]
        after = b.state_to_numpy(model)
        moved[backend] = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert moved["torch"] == moved["jax"] == ["conv2.bias", "conv2.weight", "fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    np.testing.assert_allclose(losses["jax"], losses["torch"], atol=1e-3, rtol=0)


def test_best_epoch_is_the_result_and_early_stopping_stops(data_dir, tmp_path):
    from zoo.train import TrainConfig, fit

    cfg = TrainConfig(model="mlp-mnist", backend="torch", epochs=4, batch_size=256, max_train_examples=512, early_stopping_patience=1,
                      init_from="mlp-mnist", optimizer=OptimizerConfig(name="sgd", lr=0.0))  # lr 0: no epoch beats the first
    summary = fit(cfg, tmp_path, data_dir=data_dir, progress=False)
    assert summary["epochs_run"] == 2 and summary["best_epoch"] == 1, summary
    assert (tmp_path / "final.safetensors").read_bytes() == (tmp_path / "epoch-1.safetensors").read_bytes()
    assert zoo.load(str(tmp_path / "final.safetensors"), backend="jax").zoo_spec.finetuned_from == "mlp-mnist.v1"


def test_bundled_recipes_are_the_ones_the_shipped_weights_record():
    from zoo.cli_train import recipe_path

    for name in zoo.list_models(pretrained=True):
        info = zoo.model_info(name)
        recorded = info["weights"][info["default_tag"]]["config"]
        recipe = json.loads(recipe_path(None, name).read_text())
        recipe.pop("description", None)
        for key, value in recipe.items():
            if key == "optimizer":
                assert {k: recorded["optimizer"][k] for k in value} == value, name
            else:
                assert recorded[key] == value, f"{name}: {key}"
    assert recipe_path("cnn-mnist-article", "cnn-mnist").name == "cnn-mnist-article.json"
    with pytest.raises(FileNotFoundError, match="bundled: "):
        recipe_path("no-such-recipe", "cnn-mnist")


def test_a_pushed_finetuned_file_names_its_base_model(tmp_path):
    from zoo.hub import prepare_folder

    path = tmp_path / "tuned.safetensors"
    zoo.save(zoo.load("cnn-mnist", backend="torch", labels=["x", "y"]), path)
    card = (prepare_folder(str(path), tmp_path / "hub", "me/tuned") / "README.md").read_text()
    assert "base_model: cnn-mnist.v1" in card and "Fine-tuned from `cnn-mnist.v1`" in card
    assert "test accuracy" not in card.lower().split("---")[1]  # its front matter claims no metrics


def test_the_kept_epoch_follows_the_selection_rule():
    from zoo.train import TrainConfig, best_epoch

    history = [{"epoch": 1, "val_accuracy": 0.99, "val_loss": 0.030}, {"epoch": 2, "val_accuracy": 1.0, "val_loss": 0.020},
               {"epoch": 3, "val_accuracy": 1.0, "val_loss": 0.010}, {"epoch": 4, "val_accuracy": 0.99, "val_loss": 0.005},
               {"epoch": 5, "val_accuracy": 1.0, "val_loss": 0.010}]
    assert best_epoch(history)["epoch"] == 3  # saturated accuracy: the lower loss, then the earlier epoch
    assert best_epoch(history, "val_loss")["epoch"] == 4
    with pytest.raises(ValueError, match="select_on='accuracy'"):
        TrainConfig(model="cnn-mnist", select_on="accuracy")
