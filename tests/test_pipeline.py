"""`zoo.pipeline` in batches: input order kept under length sorting, any iterable, empty input, bounded memory.

The references are computed without the batching code: the backend's own `logits` on `Pipeline.preprocess`
of one item at a time (or of the whole input as one batch)."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo
import zoo.api
from zoo.backends import get_backend

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "jax")


def imdb_test_reviews(data_dir: Path, n: int) -> tuple[list[str], np.ndarray]:
    """`n` reviews spread evenly over the IMDb test split (it is sorted by label), and their labels."""
    import pyarrow.parquet as pq

    table = pq.read_table(data_dir / "imdb" / "test.parquet", columns=["text", "label"])
    pick = np.linspace(0, table.num_rows, n, endpoint=False).astype(int)
    return table.column("text").take(pick).to_pylist(), np.asarray(table.column("label").take(pick).to_pylist())


def mnist_test_digits(data_dir: Path, n: int) -> tuple[list, np.ndarray]:
    """The first `n` MNIST test digits as PIL images, and their labels."""
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(data_dir / "mnist" / "test.parquet").slice(0, n)
    images = [Image.open(io.BytesIO(cell["bytes"])) for cell in table.column("image").to_pylist()]
    return images, np.asarray(table.column("label").to_pylist())


def one_at_a_time(pipe, items) -> np.ndarray:
    """Logits of each item alone, through the backend directly (no batching, no sorting, no padding)."""
    logits = get_backend(pipe.backend).logits
    return np.concatenate([np.asarray(logits(pipe.model, pipe.preprocess([item])), np.float32) for item in items])


def assert_same_predictions(pred, reference_logits: np.ndarray) -> None:
    assert pred.logits.shape == reference_logits.shape and pred.logits.dtype == np.float32
    np.testing.assert_allclose(pred.logits, reference_logits, atol=2e-5, rtol=1e-5)  # float32 batch effects only
    assert pred.indices.tolist() == reference_logits.argmax(1).tolist()


@pytest.fixture(scope="module")
def reviews(data_dir):
    texts, labels = imdb_test_reviews(data_dir, 23)  # 23 = 5 batches of 4 and a partial one of 3
    return texts, labels


@pytest.fixture(scope="module", params=BACKENDS)
def transformer(request):
    return zoo.pipeline("transformer-imdb", backend=request.param, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def alone(transformer, reviews):
    """The reviews' logits one at a time (in JAX one compilation per length: computed once per backend)."""
    return one_at_a_time(transformer, reviews[0])


def test_text_batches_sorted_by_length_come_back_in_input_order(transformer, reviews, alone):
    """Catches: results left in sorted order, the last partial batch dropped, padding that changes a result."""
    texts, labels = reviews
    lengths = (transformer.preprocess(texts) != 0).sum(1).tolist()
    assert lengths != sorted(lengths) and len(set(lengths)) > 10, "the reviews must need sorting for this test to mean anything"
    pred = transformer(texts)
    assert_same_predictions(pred, alone)
    assert pred.labels == [transformer.spec.labels[i] for i in pred.indices]
    assert (pred.indices == labels).mean() > 0.7  # the shipped weights read real reviews sensibly


def test_batch_size_changes_no_result(transformer, reviews):
    """Batched == unbatched: the same Prediction whatever the batch size (one batch, several, one per review)."""
    texts, _ = reviews
    whole = get_backend(transformer.backend).logits(transformer.model, transformer.preprocess(texts))
    for batch_size in (1, 4, 64):
        pipe = zoo.pipeline(transformer.model, batch_size=batch_size, progress=False)
        assert pipe.backend == transformer.backend
        assert_same_predictions(pipe(texts), np.asarray(whole, np.float32))


def test_generator_is_read_window_by_window(transformer, reviews, alone, monkeypatch):
    """Catches: a generator read whole before the first batch runs (memory grows with the input), windows lost
    or reordered (the last, partial window too); batches at every token width (in JAX one compilation each, in
    PyTorch a fragmented heap)."""
    texts, _ = reviews
    monkeypatch.setattr(zoo.api, "SORT_WINDOW_BATCHES", 2)  # windows of 8 reviews: 23 = 8 + 8 + 7
    pulled, seen_at_each_batch, widths = [], [], []

    def generate():
        for text in texts:
            pulled.append(text)
            yield text

    real_logits = transformer._logits

    def counting_logits(batch):  # the real forward pass, noting how much of the input had been read by then
        seen_at_each_batch.append(len(pulled))
        widths.append(batch.shape[1])
        return real_logits(batch)

    monkeypatch.setattr(transformer, "_logits", counting_logits)
    pred = transformer(generate())
    assert_same_predictions(pred, alone)
    assert seen_at_each_batch == [8, 8, 16, 16, 23, 23]
    assert all(width % 32 == 0 for width in widths), widths  # few shapes: at most max_len / 32


def test_a_single_batch_runs_at_its_exact_width(transformer, reviews, monkeypatch):
    """One batch (e.g. one review) is not padded up to a multiple of 32: that would only add work to each call.
    Catches: rounding every batch's width up."""
    texts, _ = reviews
    widths = []
    real_logits = transformer._logits
    monkeypatch.setattr(transformer, "_logits", lambda batch: widths.append(batch.shape[1]) or real_logits(batch))
    short = [text for text in texts if len(transformer.preprocess(text)[0]) % 32][:3]
    for batch in ([short[0]], short):
        transformer(batch)
        assert widths.pop() == transformer.preprocess(batch).shape[1]


def test_datasets_columns_of_texts_and_images(transformer, reviews, alone, data_dir):
    """A `datasets` column (in datasets 5 a `Column`, not a list) goes in as it is, texts or PIL images."""
    import datasets

    texts, labels = reviews
    column = datasets.Dataset.from_dict({"text": texts, "label": labels.tolist()})["text"]
    assert not isinstance(column, list | tuple)  # the case this test is for; a list is tested above
    assert_same_predictions(transformer(column), alone)

    digits, digit_labels = mnist_test_digits(data_dir, 7)
    images = datasets.Dataset.from_dict({"image": digits}, features=datasets.Features({"image": datasets.Image()}))["image"]
    pipe = zoo.pipeline("cnn-mnist", backend=transformer.backend, batch_size=3)
    pred = pipe(images)
    assert_same_predictions(pred, one_at_a_time(pipe, digits))
    assert pred.indices.tolist() == digit_labels.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_image_arrays_in_batches(backend):
    """(N, H, W) and (N, H, W, 1) arrays split into batches of 3 (the last one partial); one (H, W) image is
    one prediction. Catches: the last partial batch dropped, batches out of order, a single image taken for N rows."""
    images = np.random.default_rng(0).integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    pipe = zoo.pipeline("cnn-mnist", backend=backend, batch_size=3)
    whole = np.asarray(get_backend(backend).logits(pipe.model, pipe.preprocess(images)), np.float32)
    for variant in (images, images[..., None], tuple(images), (image for image in images)):
        assert_same_predictions(pipe(variant), whole)
    assert_same_predictions(pipe(images[4]), whole[4:5])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["cnn-mnist", "transformer-imdb"])
def test_empty_input_gives_an_empty_prediction(name, backend):
    pipe = zoo.pipeline(name, backend=backend)
    num_classes = len(pipe.spec.labels)
    empties = [[], (), iter([])] + ([np.zeros((0, 28, 28), np.uint8)] if name == "cnn-mnist" else [])
    for empty in empties:
        pred = pipe(empty)
        assert pred.labels == []
        assert pred.indices.shape == (0,)
        assert pred.probabilities.shape == pred.logits.shape == (0, num_classes)
        assert pred.probabilities.dtype == pred.logits.dtype == np.float32


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True, np.float32(4)])
def test_batch_size_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        zoo.pipeline("no-such-model", batch_size=bad)  # checked before any model is looked up or loaded
    model = zoo.load("mlp-mnist", backend="torch", pretrained=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        zoo.api.Pipeline(model, "torch", batch_size=bad)
    assert zoo.pipeline(model, batch_size=np.int64(7)).batch_size == 7


def test_default_batch_sizes_and_progress_validation():
    assert zoo.pipeline("mlp-mnist", pretrained=False).batch_size == zoo.api.DEFAULT_BATCH_SIZE["image"] == 256
    assert zoo.pipeline("transformer-imdb", pretrained=False).batch_size == zoo.api.DEFAULT_BATCH_SIZE["text"] == 64
    with pytest.raises(ValueError, match="progress must be True, False or None"):
        zoo.pipeline("mlp-mnist", pretrained=False, progress="yes")


def test_progress_bar_automatic_forced_and_without_a_total(capsys):
    """progress=None: no bar for a few batches, a bar with the total beyond; a generator's bar counts without a
    total; progress=False: never; progress=True: always."""
    pipe = zoo.pipeline("mlp-mnist", pretrained=False, batch_size=2)
    images = np.zeros((9, 28, 28), np.uint8)  # 5 batches of 2: more than AUTO_PROGRESS_BATCHES = 4
    pipe(images[:8])
    assert capsys.readouterr().err == ""
    pipe(images)
    assert "0/9 [" in capsys.readouterr().err  # from the start, the total being known
    pipe(image for image in images)
    err = capsys.readouterr().err
    assert "9input [" in err and "/9" not in err
    zoo.pipeline(pipe.model, batch_size=2, progress=False)(images)
    assert capsys.readouterr().err == ""
    zoo.pipeline(pipe.model, batch_size=2, progress=True)(images[:1])
    assert "/1 [" in capsys.readouterr().err


def test_benchmark_smoke_run(data_dir, tmp_path):
    """benchmarks/pipeline_memory.py end to end on a few reviews (the full run is committed in benchmarks/results)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pipeline_memory.py"), "--reviews", "24", "--models", "lstm-imdb",
           "--repeats", "2", "--data-dir", str(data_dir), "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    result = json.loads((tmp_path / "pipeline_memory.json").read_text())
    assert [(r["model"], r["backend"], r["reviews"]) for r in result["rows"]] == [("lstm-imdb", "torch", 24), ("lstm-imdb", "jax", 24)]
    assert all(r["peak_rss_mb"] >= r["rss_before_call_mb"] > 0 and 0 <= r["accuracy"] <= 1 for r in result["rows"])
    assert [(r["model"], r["backend"]) for r in result["batch_of_1"]] == [
        ("cnn-mnist", "torch"), ("cnn-mnist", "jax"), ("transformer-imdb", "torch"), ("transformer-imdb", "jax")]
    assert "| lstm-imdb | jax | 64 | 24 |" in (tmp_path / "pipeline_memory.md").read_text()
    assert (tmp_path / "pipeline_memory.png").read_bytes()[:4] == b"\x89PNG"


def load_benchmark():
    """benchmarks/pipeline_memory.py as a module: the slow test measures exactly as the benchmark does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pipeline_memory", ROOT / "benchmarks" / "pipeline_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_rss_is_the_childs_own_not_its_parents(data_dir):
    """Catches: `ru_maxrss` as the peak (a child started by a large parent, e.g. a pytest worker, inherits the
    parent's peak through vfork + exec: CI read 3.39 GiB for both backends, the worker's own peak)."""
    bench = load_benchmark()
    # This process now peaks above 1.5 GiB; a 4-review child peaks near 0.8 GiB (torch 2.14's CUDA build, on CPU).
    ballast_mb = 1536
    ballast = np.ones(ballast_mb * 1024 * 1024 // 8)
    row = bench.run_child(bench.MEMORY_RUN, {"imdb": str(data_dir / "imdb" / "test.parquet"), "reviews": 4,
                                             "model": "lstm-imdb", "backend": "torch", "batch_size": None})[0]
    assert ballast.sum() > 0 and row["peak_rss_mb"] < ballast_mb, row


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_5000_reviews_stay_within_3_gib(backend, data_dir):
    """The reported failure: 5,000 IMDb reviews through transformer-imdb in JAX were OOM-killed at 24 GB (one
    batch). A fresh process, so its peak RSS is the pipeline's alone (imports and model included)."""
    bench = load_benchmark()
    result = bench.run_child(bench.MEMORY_RUN, {"imdb": str(data_dir / "imdb" / "test.parquet"), "reviews": 5000,
                                                "model": "transformer-imdb", "backend": backend, "batch_size": None})[0]
    assert result["reviews"] == 5000
    assert result["peak_rss_mb"] <= bench.RSS_TARGET_MB, f"peak RSS {result['peak_rss_mb'] / 1024:.2f} GiB"
    assert result["accuracy"] > 0.80
