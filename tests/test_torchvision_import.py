"""`zoo import torchvision:NAME`, end to end, without mocks and without a download.

No weights can be downloaded here, so a seeded random torchvision state dict is saved in a temporary torch hub cache
($TORCH_HOME) under the exact file name torchvision's `load_state_dict_from_url` looks for; the import then runs its
ordinary path (`weights.get_state_dict`) and finds it there (benchmarks/torchvision_import.py does the same). The
photo is matplotlib's grace_hopper.jpg. Each test's docstring names the planted bug it catches."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

import zoo
from zoo.checkpoint import read_checkpoint
from zoo.preprocess import image_batch, is_single_image, resized_size

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "jax")


def _bench():
    spec = importlib.util.spec_from_file_location("tv_import_bench", ROOT / "benchmarks" / "torchvision_import.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench()


def weights_of(name: str, weights: str = "DEFAULT"):
    from zoo.torchvision_import import resolve_weights

    return resolve_weights(f"torchvision:{name}", weights)


def preprocessing_of(name: str, weights: str = "DEFAULT") -> dict:
    from zoo.torchvision_import import preprocessing_of as of

    return of(weights_of(name, weights), zoo.registry.get_spec(name).preprocessing)


def top5(logits: np.ndarray) -> list[int]:
    return np.argsort(-logits, axis=-1, kind="stable")[..., :5].tolist()


def env_for(torch_home: Path) -> dict:
    return {**os.environ, "TORCH_HOME": str(torch_home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """resnet18's seeded weights imported once through `zoo.import_weights`: (file, seeded state dict, weights)."""
    tmp = tmp_path_factory.mktemp("tv-import")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp / "torch-home"))
        state = bench.seed_torchvision_cache("torchvision:resnet18")
        path = zoo.import_weights("torchvision:resnet18", weights="IMAGENET1K_V1", out=tmp / "r18.safetensors", progress=False)
    return path, state, weights_of("resnet18")


@pytest.fixture(scope="module")
def models(imported):
    return {b: zoo.load(imported[0], backend=b) for b in BACKENDS}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    """The photo as a path, a PIL image, a PNG with an alpha channel (path), a greyscale image and uint8 arrays."""
    tmp = tmp_path_factory.mktemp("photos")
    path = bench.photo_path()
    rgb = Image.open(path).convert("RGB")
    alpha = np.asarray(rgb.convert("L"))[..., None] // 2 + 64  # varies over the image: a bug that blends it in shows
    rgba = Image.fromarray(np.concatenate([np.asarray(rgb), alpha], axis=-1))
    rgba.save(tmp / "alpha.png")
    grey = rgb.convert("L")
    return {"jpg path": path, "PIL RGB": rgb, "PNG RGBA path": str(tmp / "alpha.png"), "PIL RGBA": rgba, "PIL L": grey,
            "array (H, W, 3)": np.asarray(rgb), "array (H, W, 4)": np.asarray(rgba), "array (H, W)": np.asarray(grey)}


def test_import_writes_the_seeded_tensors_bit_for_bit_and_what_torchvision_states(imported):
    """Catches: tensors altered on the way (a transpose, a float64 round trip, a dropped num_batches_tracked), the
    registry's preprocessing or labels written instead of the weights' own, labels dropped, metrics recorded as the
    zoo's own, an invented licence, a missing source URL, weights name or recipe."""
    path, state, w = imported
    ckpt = read_checkpoint(path)
    assert ckpt.tensors.keys() == state.keys()
    for key, value in state.items():
        assert ckpt.tensors[key].dtype == value.numpy().dtype and ckpt.tensors[key].tobytes() == value.numpy().tobytes(), key
    t = w.transforms()
    assert ckpt.preprocessing == {"kind": "image", "height": t.crop_size[0], "width": t.crop_size[0], "channels": 3,
                                  "resize_size": t.resize_size[0], "interpolation": t.interpolation.value, "mode": "RGB",
                                  "mean": list(t.mean), "std": list(t.std)}
    assert ckpt.labels == w.meta["categories"] and len(ckpt.labels) == 1000 and ckpt.config["num_classes"] == 1000
    m = ckpt.metadata
    assert m["source"] == "torchvision:resnet18" and m["source_weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert m["source_url"] == w.url and m["recipe"] == w.meta["recipe"]
    assert "license" not in w.meta and m["license"] == "not stated by torchvision"
    reported = json.loads(m["reported_metrics"])
    assert reported["metrics"] == w.meta["_metrics"] == {"ImageNet-1K": {"acc@1": 69.758, "acc@5": 89.078}}
    assert reported["reported_by"] == f"torchvision {torchvision.__version__}" and reported["measured_by_zoo"] is False
    assert f"torchvision {torchvision.__version__}" in m["written_by"]


def test_each_weights_records_its_own_transforms_config_and_licence():
    """Catches: the registry's preprocessing kept instead of the weights' (resnet50 V1 resizes to 256, V2 to 232;
    efficientnet_b0 is bicubic; ViT SWAG_E2E is 384 bicubic and needs image_size 384), the licence torchvision does
    state (SWAG's) dropped, DEFAULT not resolving to the weights torchvision calls DEFAULT."""
    from zoo.torchvision_import import config_of, provenance

    assert preprocessing_of("resnet50", "IMAGENET1K_V1")["resize_size"] == 256
    assert preprocessing_of("resnet50", "IMAGENET1K_V2")["resize_size"] == 232 == preprocessing_of("resnet50")["resize_size"]
    assert preprocessing_of("resnet50", "ResNet50_Weights.IMAGENET1K_V2") == preprocessing_of("resnet50", "IMAGENET1K_V2")
    assert preprocessing_of("efficientnet_b0")["interpolation"] == "bicubic"
    assert preprocessing_of("convnext_tiny")["resize_size"] == 236
    swag = weights_of("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")
    p = preprocessing_of("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")
    assert (p["height"], p["width"], p["resize_size"], p["interpolation"]) == (384, 384, 384, "bicubic")
    assert config_of(swag, zoo.registry.get_spec("vit_b_16").config)["image_size"] == 384
    assert config_of(weights_of("vit_b_16"), zoo.registry.get_spec("vit_b_16").config)["image_size"] == 224
    assert provenance("torchvision:vit_b_16", swag)["license"] == swag.meta["license"] == "https://github.com/facebookresearch/SWAG/blob/main/LICENSE"
    assert weights_of("resnet50").name == torchvision.models.get_model_weights("resnet50").DEFAULT.name == "IMAGENET1K_V2"


# Sizes (width, height) that pin torchvision's arithmetic for resize 256 -> crop 224 (checked below): the longer side
# truncated (257.7 -> 257), crop offsets of k + 0.5 rounded half to even (16.5 -> 16, 19.5 -> 20), portrait and
# landscape, a square, an image already 256 on its short side, one smaller than the crop (upsampled), the photo itself.
SIZES = [(302, 300), (309, 300), (300, 314), (300, 316), (300, 300), (256, 256), (100, 151), (512, 600)]


def test_the_chosen_sizes_exercise_every_rounding_rule():
    """Keeps SIZES honest: without these cases a truncation or crop-rounding bug could pass the test below."""
    longs = [256 * max(w, h) / min(w, h) for w, h in SIZES]
    assert any(x - int(x) >= 0.5 for x in longs), "a longer side where truncation and rounding differ"
    offsets = [(int(x) - 224) / 2 for x in longs]
    assert any(o % 1 == 0.5 and int(o) % 2 == 0 for o in offsets), "a k + 0.5 offset with k even (half-up would differ)"
    assert any(o % 1 == 0.5 and int(o) % 2 == 1 for o in offsets), "a k + 0.5 offset with k odd (floor would differ)"
    assert resized_size(300, 302, 256) == (256, 257) and resized_size(314, 300, 256) == (267, 256)


@pytest.mark.parametrize("name,weights", [("resnet18", "IMAGENET1K_V1"), ("resnet50", "IMAGENET1K_V2"), ("efficientnet_b0", "DEFAULT"),
                                          ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")])
def test_preprocessing_equals_torchvision_transforms_on_pil_images_exactly(name, weights):
    """Catches: crop offsets floored or rounded half up instead of Python's round (half to even), the longer side
    rounded instead of truncated, width and height swapped, the wrong interpolation (bilinear for efficientnet's
    bicubic), no antialiasing, mean/std misapplied, a wrong resize size (232 for resnet50 V2, 384 for SWAG)."""
    w = weights_of(name, weights)
    p = preprocessing_of(name, weights)
    transform = w.transforms()
    photo = Image.open(bench.photo_path()).convert("RGB")
    for size in SIZES:
        image = photo.resize(size, Image.BILINEAR)
        ours = image_batch(image, p)[0].transpose(2, 0, 1)
        theirs = transform(image).numpy()
        assert ours.shape == theirs.shape == (3, p["height"], p["width"]), size
        assert np.abs(ours - theirs).max() == 0, (size, float(np.abs(ours - theirs).max()))


@pytest.mark.parametrize("name,levels", [("resnet18", (1, 1)), ("efficientnet_b0", (2, 8))])
def test_torchvision_on_a_uint8_tensor_differs_by_a_few_levels(name, levels):
    """Pins the measured gap to torchvision's tensor path. It uses the same filters as PIL but runs both passes in float
    and rounds once, where PIL rounds and clips to 0..255 between its passes: bilinear values move by one uint8 level
    at most, bicubic ones by a few near sharp edges (the overshoot PIL clips halfway). Catches a zoo resize that is not
    antialiased or uses another filter (many levels off, on most values) and a preprocessing equal to neither path."""
    d = bench.preprocessing_difference(bench.photo_path(), weights_of(name), preprocessing_of(name))
    assert d["pil"] == {"max_abs_diff": 0.0, "max_uint8_levels": 0, "fraction_differing": 0.0}
    assert levels[0] <= d["tensor"]["max_uint8_levels"] <= levels[1] and 0 < d["tensor"]["fraction_differing"] < 0.25, d


def test_both_backends_give_the_same_top5_on_photos_of_every_kind(models, photos):
    """Catches: the alpha channel fed to the model or blended in (RGBA must read as PIL's .convert("RGB")), a greyscale
    image refused or not copied to 3 channels, an (H, W, 4) array taken for 4 greyscale images, a path or open file
    not read, and the two backends disagreeing on the same file."""
    rgb = photos["PIL RGB"]
    expected = {"PNG RGBA path": rgb, "PIL RGBA": rgb, "array (H, W, 4)": rgb, "PIL L": photos["PIL L"].convert("RGB"),
                "array (H, W)": photos["PIL L"].convert("RGB")}
    p = models["torch"].zoo_spec.preprocessing
    for kind, item in photos.items():
        assert is_single_image(item, p), kind
        assert np.array_equal(image_batch(item, p), image_batch(expected.get(kind, rgb), p)), kind
    assert not np.array_equal(image_batch(photos["PIL L"], p), image_batch(rgb, p))
    items = list(photos.values())
    logits = {b: zoo.pipeline(models[b])(items).logits for b in BACKENDS}
    assert logits["torch"].shape == (len(items), 1000)
    assert top5(logits["torch"]) == top5(logits["jax"])
    np.testing.assert_allclose(logits["torch"], logits["jax"], atol=1e-4)
    with open(bench.photo_path(), "rb") as f:  # an open file reads as its path does (both alone: no batch-size effects)
        assert np.array_equal(zoo.pipeline(models["jax"])(f).logits, zoo.pipeline(models["jax"])(bench.photo_path()).logits)
    batch = np.stack([np.asarray(rgb)] * 2)  # (N, H, W, 3): a batch, not one image
    assert not is_single_image(batch, p) and zoo.pipeline(models["torch"])(batch).logits.shape == (2, 1000)


def test_a_file_path_loads_in_both_backends_and_pipelines_take_the_file_itself(imported, models):
    """Catches `zoo.load`/`zoo.pipeline` refusing a pathlib.Path, the file not carrying its preprocessing and labels, and
    photos batched 256 at a time by default (MNIST's default: gigabytes of activations for ImageNet-sized models)."""
    path = imported[0]
    pred = zoo.pipeline(path, backend="jax")(bench.photo_path())
    assert pred.labels[0] == read_checkpoint(path).labels[pred.indices[0]]
    assert top5(pred.logits) == top5(zoo.pipeline(models["torch"])(bench.photo_path()).logits)
    assert models["jax"].zoo_spec.preprocessing["resize_size"] == 256 and len(models["jax"].zoo_spec.labels) == 1000
    assert zoo.pipeline(models["torch"]).batch_size == zoo.api.PHOTO_BATCH_SIZE == 32


def test_unknown_model_or_weights_are_clear_errors_listing_the_valid_ones(tmp_path):
    """Catches errors that do not name the valid models or weights, a torchvision model the zoo has no twin for
    accepted, and the CLI printing a traceback instead of one line with exit status 2."""
    with pytest.raises(LookupError, match=r"not a zoo model.*Did you mean: torchvision:resnet50.*Importable: .*torchvision:vit_b_16"):
        zoo.import_weights("resnet50")
    with pytest.raises(LookupError, match="'torchvision:alexnet': not a zoo model"):
        zoo.import_weights("torchvision:alexnet")
    with pytest.raises(LookupError, match=r"has no weights 'IMAGENET1K_V3'.*DEFAULT \(= IMAGENET1K_V2\), IMAGENET1K_V1, IMAGENET1K_V2"):
        zoo.import_weights("torchvision:resnet50", weights="IMAGENET1K_V3")
    run = subprocess.run([sys.executable, "-m", "zoo.cli", "import", "torchvision:resnet18", "--weights", "V9"], cwd=tmp_path,
                         env=env_for(tmp_path), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("zoo import: error: torchvision:resnet18 has no weights 'V9'")
    assert "IMAGENET1K_V1" in run.stderr and "Traceback" not in run.stderr and not list(tmp_path.glob("*.safetensors"))


def test_without_torchvision_the_error_says_what_to_install(tmp_path):
    """Catches a bare ModuleNotFoundError traceback, or zoo importing torchvision outside the import path."""
    code = ("import sys; sys.modules['torchvision'] = None  # torchvision not installed\n"
            "from zoo.cli import main; sys.exit(main(['import', 'torchvision:resnet18']))")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "zoo import needs torchvision" in run.stderr and "pip install 'zoo-twins[vision]'" in run.stderr
    assert "Traceback" not in run.stderr


def test_importing_zoo_and_its_preprocessing_loads_no_framework():
    """Catches a module-level `import torchvision` (or PIL, torch) in the import path or the preprocessing."""
    code = ("import sys, zoo, zoo.torchvision_import, zoo.preprocess; zoo.import_weights; "
            "print(sorted(m for m in ('torch', 'torchvision', 'PIL', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=env_for(ROOT), capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_import_writes_the_same_file_under_the_default_name(imported, tmp_path):
    """Catches the CLI ignoring --weights, a wrong default file name, or the CLI and Python writing different files."""
    env = env_for(tmp_path / "torch-home")
    seed = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import torchvision_import as b; "
            "b.seed_torchvision_cache('torchvision:resnet18')")
    subprocess.run([sys.executable, "-c", seed], env=env, check=True, timeout=300)
    run = subprocess.run([sys.executable, "-m", "zoo.cli", "import", "torchvision:resnet18", "--weights", "ResNet18_Weights.IMAGENET1K_V1",
                          "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    written = tmp_path / "resnet18.IMAGENET1K_V1.safetensors"
    assert f"wrote {written.name}" in run.stdout
    a, b = read_checkpoint(written), read_checkpoint(imported[0])
    assert a.tensors.keys() == b.tensors.keys() and all(a.tensors[k].tobytes() == b.tensors[k].tobytes() for k in a.tensors)
    assert a.metadata == b.metadata


def test_push_card_carries_licence_source_and_reported_accuracy(imported, tmp_path):
    """Catches the card dropping the licence or source URL, and torchvision's reported accuracy presented as the zoo's
    measurement (in the model-index, or without "not measured by the zoo")."""
    from hubserver import HubServer

    hub = HubServer().start()
    try:
        env = {k: v for k, v in env_for(tmp_path).items() if not k.startswith(("HF_", "HUGGINGFACE"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN="test-token", HF_HUB_DISABLE_TELEMETRY="1")
        run = subprocess.run([sys.executable, "-m", "zoo.cli", "push", str(imported[0]), "--repo", "org/r18"], env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        repo = hub.repos["org/r18"]
        files = repo.commits[repo.branches["main"]]
    finally:
        hub.stop()
    card, config = files["README.md"].decode(), json.loads(files["config.json"])
    w = imported[2]
    assert "Licence of the weights: not stated by torchvision." in card and w.url in card and w.meta["recipe"] in card
    assert "## Accuracy reported by torchvision (not measured by the zoo)" in card and "`ResNet18_Weights.IMAGENET1K_V1`" in card
    assert "| ImageNet-1K | acc@1 | 69.758 |" in card and "| ImageNet-1K | acc@5 | 89.078 |" in card
    assert "model-index" not in card and config["metrics"] is None
    assert config["imported_from"]["license"] == "not stated by torchvision" and config["imported_from"]["url"] == w.url
    assert config["imported_from"]["reported_metrics"]["metrics"] == w.meta["_metrics"]
    assert files["model.safetensors"] == Path(imported[0]).read_bytes()


@pytest.mark.slow  # 30 s (mobilenet_v3_small, efficientnet_b0) to minutes (vit_b_16) each on 2 CPU cores, mostly JAX compiling
@pytest.mark.parametrize("name", [n for n in bench.MODELS if n != "resnet18"])
def test_every_torchvision_model_imports_bit_for_bit_with_the_same_top5_in_both_backends(name, tmp_path, monkeypatch):
    """Catches, per model: a twin whose state dict is not key-for-key torchvision's (strict load fails), a tensor altered
    on the way, and the backends disagreeing on the photo (the benchmark's own measurement), on logits that are not
    degenerate (torchvision's ViT head starts at zero: every logit 0 would make any two top-5s equal)."""
    if not bench.twins_exist(name):
        pytest.skip(f"{name}: twins not written yet")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    r = bench.measure(name, tmp_path)
    assert r["file_equals_seeded_state_dict"] and r["top5_identical"] and r["top6_smallest_gap"] > 10 * r["max_abs_logit_diff"], r
    assert r["preprocessing_vs_torchvision"]["pil"]["max_abs_diff"] == 0


def test_committed_results_are_what_the_benchmark_measures_for_resnet18(tmp_path, monkeypatch):
    """Catches benchmarks/results/torchvision_import/results.json edited by hand or left stale (resnet18's seeded
    weights are deterministic: the same top-5 and preprocessing figures on any machine)."""
    committed = json.loads((bench.RESULTS / "results.json").read_text())
    entry = next(r for r in committed["models"] if r["model"] == "resnet18")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    fresh = bench.measure("resnet18", tmp_path)
    for backend in BACKENDS:
        assert [x["label"] for x in fresh["top5"][backend]] == [x["label"] for x in entry["top5"][backend]]
        np.testing.assert_allclose([x["probability"] for x in fresh["top5"][backend]],
                                   [x["probability"] for x in entry["top5"][backend]], rtol=1e-4)
    same = {k: v for k, v in fresh.items() if k not in ("top5", "max_abs_logit_diff", "top6_smallest_gap", "preprocessing_vs_torchvision")}
    assert same == {k: entry[k] for k in same}
    assert fresh["top6_smallest_gap"] == pytest.approx(entry["top6_smallest_gap"], rel=1e-3)
    assert fresh["top6_smallest_gap"] > 100 * fresh["max_abs_logit_diff"], "the top-5 comparison would be a coin toss"
    assert fresh["preprocessing_vs_torchvision"]["pil"] == entry["preprocessing_vs_torchvision"]["pil"]
    for key, value in fresh["preprocessing_vs_torchvision"]["tensor"].items():
        assert value == pytest.approx(entry["preprocessing_vs_torchvision"]["tensor"][key], rel=1e-5), key
    assert fresh["max_abs_logit_diff"] < 1e-4 and entry["max_abs_logit_diff"] < 1e-4


def test_readme_section_is_rendered_from_the_committed_results():
    """Catches the README's torchvision section edited by hand or left stale, or a section that does not say the
    weights are seeded random; and a committed run missing one of the six models without saying so."""
    from zoo.docs import torchvision_import_section

    section = torchvision_import_section()
    assert section in (ROOT / "README.md").read_text(), "README torchvision section is stale: run `python -m zoo.docs --write`"
    assert "seeded random" in section and "labels are meaningless" in section
    committed = json.loads((bench.RESULTS / "results.json").read_text())
    assert sorted([r["model"] for r in committed["models"]] + committed["skipped"]) == sorted(bench.MODELS)
    assert all(r["top5_identical"] and r["file_equals_seeded_state_dict"] for r in committed["models"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_provenance_survives_load_and_save_and_a_new_head_drops_the_reported_accuracy(imported, backend, tmp_path):
    """Catches: `zoo.save` of a loaded imported model dropping its licence, source or reported accuracy (a
    non-commercial licence lost on the way), and a re-headed model still claiming the source's ImageNet accuracy."""
    original = read_checkpoint(imported[0]).metadata
    keys = ("source", "source_weights", "source_url", "license", "recipe", "reported_metrics")
    model = zoo.load(imported[0], backend=backend)
    assert model.zoo_spec.provenance == {k: original[k] for k in keys}
    zoo.save(model, tmp_path / "again.safetensors")
    assert {k: read_checkpoint(tmp_path / "again.safetensors").metadata.get(k) for k in keys} == {k: original[k] for k in keys}
    tuned = zoo.load(imported[0], backend=backend, labels=["cat", "dog"])
    assert tuned.zoo_spec.provenance == {k: original[k] for k in keys if k != "reported_metrics"}
    zoo.save(tuned, tmp_path / "tuned.safetensors")
    saved = read_checkpoint(tmp_path / "tuned.safetensors").metadata
    assert saved["license"] == original["license"] and saved["source_url"] == original["source_url"]
    assert "reported_metrics" not in saved and saved["finetuned_from"] == imported[0].name
