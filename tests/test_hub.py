"""Loading from and publishing to the Hugging Face Hub, against a real HTTP server on 127.0.0.1 that
speaks the Hub's file-resolve, preupload and commit protocol. The `huggingface_hub` client is real and
unpatched; each scenario runs in a fresh process, as a user's would."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hubserver import HubServer

import zoo
import zoo.api
import zoo.hub

LOAD = """
import sys, json, zoo
from zoo.backends import get_backend
name, backend = sys.argv[1], sys.argv[2]
model = zoo.load(name, backend=backend)
tensors = get_backend(backend).state_to_numpy(model)
import hashlib
h = hashlib.sha256()
for key in sorted(tensors):
    h.update(key.encode() + tensors[key].tobytes())
print(json.dumps({"sha256": h.hexdigest(), "model": model.zoo_spec.name}))
"""


def tensor_digest(path):
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode() + tensors[key].tobytes())
    return h.hexdigest()


def cached_blobs(tmp_path):
    return [p for p in (tmp_path / "hf-home").rglob("*") if p.is_file() and "blobs" in p.parts and not p.name.endswith(".lock")]


@pytest.fixture()
def hub(tmp_path):
    server = HubServer().start()
    yield server
    server.stop()


def env_for(hub, tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN="test-token", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="10", PYTHONPATH=str(Path(__file__).parent.parent))
    env.update(extra)
    return env


def run(args, env, check=True):
    result = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr[-3000:]}")
    return result


def push(hub, tmp_path, path, repo, *extra):
    out = run(["-m", "zoo.cli", "push", str(path), "--repo", repo, *extra], env_for(hub, tmp_path)).stdout
    return json.loads(out.strip().splitlines()[-1])


def load(hub, tmp_path, name, backend="torch", check=True, **extra):
    result = run(["-c", LOAD, name, backend], env_for(hub, tmp_path, **extra), check=check)
    return (json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else None), result


def checkpoint(tmp_path, name="cnn-mnist", seed=0):
    path = tmp_path / f"{name}-{seed}.safetensors"
    zoo.save(zoo.load(name, backend="torch", pretrained=False, seed=seed), path)
    return path


def test_push_then_load_gets_the_file_back_bit_for_bit_with_cache_and_pinning(hub, tmp_path):
    ckpt = checkpoint(tmp_path)
    pushed = push(hub, tmp_path, ckpt, "org/cnn")
    assert hub.count("POST", "/preupload/") == 1 and hub.count("POST", "/commit/") == 1
    files = hub.repos["org/cnn"].commits[pushed["commit"]]
    assert files["model.safetensors"] == ckpt.read_bytes()
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: zoo-twins") and "ylecun/mnist" in card and 'backend="jax"' in card
    assert "This file was not evaluated" in card and "model-index" not in card  # a random file claims no metrics
    assert json.loads(files["config.json"])["architecture"] == "cnn"

    got, _ = load(hub, tmp_path, "hf-hub:org/cnn", "jax")  # first download: one HEAD, one GET
    assert got["sha256"] == tensor_digest(ckpt)
    assert [b.read_bytes() for b in cached_blobs(tmp_path) if b.stat().st_size == ckpt.stat().st_size] == [ckpt.read_bytes()]
    assert hub.count("GET", "model.safetensors") == 1 and hub.count("HEAD", "model.safetensors") == 1

    load(hub, tmp_path, "hf-hub:org/cnn", "torch")  # branch: one freshness check, no body
    assert hub.count("GET", "model.safetensors") == 1 and hub.count("HEAD", "model.safetensors") == 2

    pinned = f"hf-hub:org/cnn@{pushed['commit']}"
    load(hub, tmp_path, pinned)  # pinned commit already cached: no request at all
    assert hub.count("HEAD", "model.safetensors") == 2 and hub.count("GET", "model.safetensors") == 1
    hub.stop()
    got, _ = load(hub, tmp_path, pinned)  # and it works with the server gone
    assert got["sha256"] == tensor_digest(ckpt)


def test_revision_pin_and_offline_mode(hub, tmp_path):
    first, second = checkpoint(tmp_path, seed=1), checkpoint(tmp_path, seed=2)
    v1 = push(hub, tmp_path, first, "org/cnn")["commit"]
    push(hub, tmp_path, second, "org/cnn")
    assert load(hub, tmp_path, f"hf-hub:org/cnn@{v1}")[0]["sha256"] == tensor_digest(first)
    assert load(hub, tmp_path, "hf-hub:org/cnn")[0]["sha256"] == tensor_digest(second)
    requests = sum(hub.requests.values())
    got, _ = load(hub, tmp_path, "hf-hub:org/cnn", HF_HUB_OFFLINE="1")  # from the cache
    assert got["sha256"] == tensor_digest(second)
    assert sum(hub.requests.values()) == requests, "offline mode must not touch the network"
    got, result = load(hub, tmp_path, "hf-hub:org/never-downloaded", check=False, HF_HUB_OFFLINE="1")
    assert got is None and "HF_HUB_OFFLINE=1" in result.stderr and "not in the local cache" in result.stderr


def test_unknown_repo_and_revision_are_clear_errors(hub, tmp_path):
    push(hub, tmp_path, checkpoint(tmp_path), "org/cnn")
    _, result = load(hub, tmp_path, "hf-hub:org/nope", check=False)
    assert "no such repository" in result.stderr
    _, result = load(hub, tmp_path, "hf-hub:org/cnn@v9", check=False)
    assert "no revision 'v9'" in result.stderr


REGISTRY_LOAD = """
import json, sys, zoo, zoo.registry as r
from pathlib import Path
data = json.loads(r.REGISTRY_PATH.read_text())
entry = data["models"]["cnn-mnist"]
entry["weights"]["hubtag"] = {"file": "not-bundled.safetensors", "sha256": sys.argv[1], "hf_hub_id": "org/cnn"}
entry["default_tag"] = "hubtag"
alt = Path(sys.argv[2]); alt.write_text(json.dumps(data))
r.REGISTRY_PATH = alt  # a registry whose default weights live on the Hub
try:
    zoo.load("cnn-mnist", backend="torch")
    print("loaded")
except Exception as e:
    print(type(e).__name__, e)
"""


def test_corrupted_download_is_refused_by_checksum_and_not_left_in_the_cache(hub, tmp_path):
    ckpt = checkpoint(tmp_path)
    push(hub, tmp_path, ckpt, "org/cnn")
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    hub.corrupt.add(("org/cnn", "model.safetensors"))
    env = env_for(hub, tmp_path)
    out = run(["-c", REGISTRY_LOAD, digest, str(tmp_path / "reg.json")], env).stdout
    assert "CheckpointError" in out and "refused and removed from the cache" in out and digest in out
    cached = list((tmp_path / "hf-home").rglob("model.safetensors"))
    assert not cached, f"corrupt file left in the cache: {cached}"
    hub.corrupt.clear()
    assert run(["-c", REGISTRY_LOAD, digest, str(tmp_path / "reg.json")], env).stdout.strip() == "loaded"


def test_four_processes_load_the_same_model_at_once(hub, tmp_path):
    ckpt = checkpoint(tmp_path, "resnet-mnist")
    push(hub, tmp_path, ckpt, "org/resnet")
    env = env_for(hub, tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", LOAD, "hf-hub:org/resnet", "torch"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    assert all(json.loads(out.strip().splitlines()[-1])["sha256"] == tensor_digest(ckpt) for out, _ in results)
    blobs = cached_blobs(tmp_path)
    assert len(blobs) == 1 and blobs[0].read_bytes() == ckpt.read_bytes()


def test_push_dry_run_writes_the_folder_only(hub, tmp_path):
    result = push(hub, tmp_path, checkpoint(tmp_path), "org/cnn", "--dry-run", "--out", str(tmp_path / "folder"))
    assert sorted(p.name for p in Path(result["folder"]).iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert hub.count("POST") == 0


# Model cards tell the truth: metrics and recipe only for the file they were measured on.

def dry_push(tmp_path, source, *extra):
    """`zoo push SOURCE --dry-run` in a fresh process (no network: offline); the card and config.json."""
    out = tmp_path / "folder"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(Path(__file__).parent.parent))
    run(["-m", "zoo.cli", "push", str(source), "--repo", "org/x", "--dry-run", "--out", str(out), *extra], env)
    return (out / "README.md").read_text(), json.loads((out / "config.json").read_text())


def claims(card, backend, m):
    """The two places a card states a backend's accuracy: the model-index entry and the table row."""
    return [f"value: {m['test_accuracy']}\n            name: test accuracy ({backend})",
            f"| {backend} | {100 * m['test_accuracy']:.2f} % | {m['n']} | {m['framework']} |"]


def test_a_random_file_named_like_a_registry_model_claims_no_metrics(tmp_path):
    """Catches the registry's metrics and recipe being copied onto any file whose model name is registered."""
    path = checkpoint(tmp_path)  # random init, model name "cnn-mnist"
    zoo.hub.push(str(path), "org/cnn", dry_run=True, folder=str(tmp_path / "folder"))
    card = (tmp_path / "folder" / "README.md").read_text()
    config = json.loads((tmp_path / "folder" / "config.json").read_text())
    assert "This file was not evaluated" in card
    assert "accuracy" not in card.lower() and "model-index" not in card and "%" not in card
    assert "Recipe" not in card and "recipes/" not in card and "zoo eval --record" not in card
    assert config["metrics_source"] is None and config["metrics"] is None and config["recipe"] is None
    assert config["registry_weights"] is None and config["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_shipped_file_carries_its_registry_metrics_and_recipe(tmp_path):
    """Catches the sha256 lookup failing for the registry's own file (by name and by a copy at another path)."""
    import shutil

    entry = zoo.registry.weights_entry("cnn-mnist")
    ref = f"cnn-mnist.{entry['tag']}"
    assert set(entry["metrics"]) == {"torch", "jax"}
    card, config = dry_push(tmp_path, "cnn-mnist")
    copy = tmp_path / "renamed.safetensors"
    shutil.copyfile(zoo.api.resolve_weights_file("cnn-mnist"), copy)
    zoo.hub.push(str(copy), "org/x", dry_run=True, folder=str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "README.md").read_text() == card, "the same bytes must get the same card, whatever the path"
    for backend, m in entry["metrics"].items():
        for claim in claims(card, backend, m):
            assert claim in card
    assert f"registry's `{ref}`" in card and f"`{entry['recipe']}`" in card and "zoo eval --record" in card
    assert config["metrics_source"] == f"registry:{ref}" and config["registry_weights"] == ref
    assert config["metrics"] == entry["metrics"] and config["recipe"] == entry["recipe"] and config["sha256"] == entry["sha256"]


def test_any_tag_of_the_registry_counts_not_only_the_default(tmp_path, monkeypatch):
    """Catches a lookup that only checks each model's default tag."""
    import zoo.registry as registry

    path = checkpoint(tmp_path, seed=5)
    data = json.loads(registry.REGISTRY_PATH.read_text())
    metrics = {"torch": {"test_accuracy": 0.125, "test_loss": 2.0, "n": 8, "framework": "torch test"}}
    data["models"]["cnn-mnist"]["weights"]["v0"] = {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                                    "recipe": "recipes/old.sh", "metrics": metrics}
    scratch = tmp_path / "registry.json"
    scratch.write_text(json.dumps(data))
    monkeypatch.setattr(registry, "REGISTRY_PATH", scratch)  # v1 stays the default tag
    zoo.hub.push(str(path), "org/x", dry_run=True, folder=str(tmp_path / "folder"))
    card = (tmp_path / "folder" / "README.md").read_text()
    assert all(claim in card for claim in claims(card, "torch", metrics["torch"]))
    assert "test accuracy (jax)" not in card and "registry's `cnn-mnist.v0`" in card and "`recipes/old.sh`" in card
    # The card's table of versions: this tag marked, the default's own recorded figures beside it (catches a v2
    # card that hides v1, or a table that copies this file's figures onto the other tags).
    v1 = data["models"]["cnn-mnist"]["weights"]["v1"]
    assert "| `cnn-mnist.v0` | this file | 12.50 % | – |" in card
    v1_row = (f"| `cnn-mnist.v1` | default | {100 * v1['metrics']['torch']['test_accuracy']:.2f} % "
              f"| {100 * v1['metrics']['jax']['test_accuracy']:.2f} % | `{v1['sha256'][:12]}` |")
    assert v1_row in card, card


def test_push_evaluate_reports_what_it_measured_on_that_file_in_both_backends(tmp_path, data_dir):
    """Catches --evaluate reporting registry figures, one backend's figures for both, or figures of another file."""
    from zoo.backends import get_backend
    from zoo.data.pipeline import load_eval_split
    from zoo.train import evaluate

    path = checkpoint(tmp_path, "mlp-mnist", seed=4)  # random init: about 10 %, far from the registry's 98.69 %
    card, config = dry_push(tmp_path, path, "--evaluate", "--data-dir", str(data_dir))
    assert config["metrics_source"] == "measured at push" and config["recipe"] is None and "Recipe" not in card
    assert "measured" in card.lower() and "`zoo push --evaluate` at push time" in card and "zoo eval --record" not in card
    assert set(config["metrics"]) == {"torch", "jax"}
    for backend in ("torch", "jax"):
        model = zoo.load(str(path), backend=backend)
        expected = evaluate(model, backend, load_eval_split(model.zoo_spec, "test", data_dir), model.zoo_spec)
        m = config["metrics"][backend]
        assert m["test_accuracy"] == expected["accuracy"] and m["n"] == expected["n"] == 10000
        assert m["framework"] == get_backend(backend).framework_version()
        for claim in claims(card, backend, m):
            assert claim in card
    registry_accuracy = zoo.registry.weights_entry("mlp-mnist")["metrics"]["torch"]["test_accuracy"]
    assert str(registry_accuracy) not in card
