"""Fine-tuning sources (zoo.data.sources) and input adaptation (zoo.adapt), on small slices of the real data that
each test writes to a temporary folder."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from zoo import adapt
from zoo.data.sources import holdout, load_source, subsample

N_USPS = 200


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


@pytest.fixture(scope="module")
def usps_rows(data_dir):
    table = pq.read_table(data_dir / "usps" / "train.parquet").slice(0, N_USPS)
    assert b"huggingface" in table.schema.metadata  # the slice keeps the ClassLabel / Image feature metadata
    return table


@pytest.fixture(scope="module")
def usps_parquet(tmp_path_factory, usps_rows, data_dir):
    root = tmp_path_factory.mktemp("usps_parquet")
    pq.write_table(usps_rows, root / "train.parquet")
    pq.write_table(pq.read_table(data_dir / "usps" / "test.parquet").slice(0, 50), root / "test.parquet")
    return root


@pytest.fixture(scope="module")
def usps_folder(tmp_path_factory, usps_rows):
    """The same 200 digits as an ImageFolder: one folder per class, named d0..d9 (not the ClassLabel names)."""
    root = tmp_path_factory.mktemp("usps_folder")
    for row, (cell, label) in enumerate(zip(usps_rows["image"].to_pylist(), usps_rows["label"].to_pylist(), strict=True)):
        (root / f"d{label}").mkdir(exist_ok=True)
        (root / f"d{label}" / f"{row:04d}.png").write_bytes(cell["bytes"])
    return root


@pytest.fixture(scope="module")
def rt_tables(data_dir):
    """Rotten Tomatoes slices with both labels: train rows are pos first, then neg, in the source."""
    train = pq.read_table(data_dir / "rotten_tomatoes" / "train.parquet")
    n = train.num_rows
    val = pq.read_table(data_dir / "rotten_tomatoes" / "validation.parquet")
    test = pq.read_table(data_dir / "rotten_tomatoes" / "test.parquet")
    return {"train": pa.concat_tables([train.slice(0, 60), train.slice(n - 60, 60)]),
            "validation": pa.concat_tables([val.slice(0, 15), val.slice(val.num_rows - 15, 15)]),
            "test": pa.concat_tables([test.slice(0, 10), test.slice(test.num_rows - 10, 10)])}


@pytest.fixture(scope="module")
def rt_parquet(tmp_path_factory, rt_tables):
    root = tmp_path_factory.mktemp("rt_parquet")
    for split, table in rt_tables.items():
        pq.write_table(table, root / f"{split}.parquet")
    return root


def _rt_records(rt_tables, names: bool) -> list[dict]:
    table = rt_tables["train"]
    return [{"text": t, "label": ["neg", "pos"][y] if names else y}
            for t, y in zip(table["text"].to_pylist(), table["label"].to_pylist(), strict=True)]


def _write_csv(path, records):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
    return path


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _key(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image).tobytes()


# ------------------------------------------------------------------------------------------------- Parquet, images


def test_usps_parquet_pixels_labels_and_holdout(usps_parquet, usps_rows):
    """Catches: wrong decoding / channels, labels not matching their images, a hold-out that is not the seeded
    stratified one, train and validation overlapping, a missing test split."""
    data = load_source(usps_parquet, kind="image")
    labels = np.asarray(usps_rows["label"].to_pylist())
    pixels = np.stack([_decode(c["bytes"]) for c in usps_rows["image"].to_pylist()])[..., None]
    train_rows, val_rows = holdout(labels, 0.1, 0)
    assert data.label_names == [str(i) for i in range(10)]
    assert data.train.inputs.dtype == np.uint8 and data.train.inputs.shape == (N_USPS - 20, 16, 16, 1)
    assert len(val_rows) == 20 and not set(train_rows) & set(val_rows) and len(train_rows) + len(val_rows) == N_USPS
    np.testing.assert_array_equal(data.train.inputs, pixels[train_rows])
    np.testing.assert_array_equal(data.val.inputs, pixels[val_rows])
    np.testing.assert_array_equal(data.train.labels, labels[train_rows])
    np.testing.assert_array_equal(data.val.labels, labels[val_rows])
    assert data.train.labels.dtype == np.int64
    assert data.test is not None and data.test.inputs.shape == (50, 16, 16, 1)
    assert "held out" in data.description and "test 50" in data.description


def test_holdout_is_stratified_seeded_and_before_subsampling(usps_parquet):
    """Catches: an unstratified or unseeded hold-out, a hold-out that depends on the subsample (taken after it), and
    validation images leaking into train."""
    a = load_source(usps_parquet, kind="image", seed=3)
    b = load_source(usps_parquet, kind="image", seed=3)
    c = load_source(usps_parquet, kind="image", seed=4)
    sub = load_source(usps_parquet, kind="image", seed=3, max_per_class=4)
    np.testing.assert_array_equal(a.val.inputs, b.val.inputs)
    assert not np.array_equal(a.val.inputs, c.val.inputs)
    np.testing.assert_array_equal(a.val.inputs, sub.val.inputs)  # the hold-out ignores the subsample
    assert not {_key(x) for x in a.val.inputs} & {_key(x) for x in a.train.inputs}  # USPS has no duplicate images
    full = np.bincount(np.concatenate([a.train.labels, a.val.labels]), minlength=10)
    val = np.bincount(a.val.labels, minlength=10)
    assert val.sum() == 20 and np.all(np.abs(val - 0.1 * full) < 1)  # each class within one example of its share


def test_max_per_class_and_max_examples(usps_parquet):
    """Catches: caps not applied per class, max_examples not proportional or dropping a class, subsamples that are not
    taken from the (remaining) train split, limits that are not nested."""
    full = load_source(usps_parquet, kind="image")
    counts = np.bincount(full.train.labels, minlength=10)
    capped = load_source(usps_parquet, kind="image", max_per_class=12)
    np.testing.assert_array_equal(np.bincount(capped.train.labels, minlength=10), np.minimum(counts, 12))
    train_keys = {_key(x) for x in full.train.inputs}
    assert {_key(x) for x in capped.train.inputs} <= train_keys
    small = load_source(usps_parquet, kind="image", max_examples=15)
    got = np.bincount(small.train.labels, minlength=10)
    assert got.sum() == 15 and got.min() >= 1 and np.all(np.abs(got - 15 * counts / counts.sum()) <= 1.5)
    smaller = load_source(usps_parquet, kind="image", max_per_class=5)
    assert {_key(x) for x in smaller.train.inputs} <= {_key(x) for x in capped.train.inputs}
    with pytest.raises(ValueError, match="max_per_class must be at least 1"):
        subsample(full.train.labels, np.arange(len(full.train)), 0, max_per_class=0)


# ------------------------------------------------------------------------------------------------- ImageFolder


def test_imagefolder_names_from_folders(usps_folder, usps_parquet):
    """Catches: label names not taken from the folder names, labels not matching their images, an image mode change."""
    folder = load_source(usps_folder, kind="image")
    assert folder.label_names == [f"d{i}" for i in range(10)]
    assert folder.test is None and len(folder.train) + len(folder.val) == N_USPS
    ref = load_source(usps_parquet, kind="image")
    truth = {_key(x): y for split in (ref.train, ref.val) for x, y in zip(split.inputs, split.labels, strict=True)}
    for split in (folder.train, folder.val):
        assert split.inputs.shape[1:] == (16, 16, 1)
        assert [truth[_key(x)] for x in split.inputs] == list(split.labels)
    fixed = load_source(usps_folder, kind="image", labels=[f"d{i}" for i in range(9, -1, -1)])  # the model's order wins
    assert fixed.label_names[0] == "d9"
    np.testing.assert_array_equal(fixed.train.labels, 9 - folder.train.labels)


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode if mode != "P" else "RGB")
    (image.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else image).save(path)


def test_imagefolder_split_folders_and_modes(tmp_path):
    """Catches: ignoring a valid/ folder, RGBA converted by dropping alpha (transparent black instead of white),
    greyscale not promoted when the source has colour images, palette images not becoming RGB."""
    grey = np.full((4, 4), 100, np.uint8)
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black: shown as white
    for i in range(3):
        _png(tmp_path / "train" / "cat" / f"{i}.png", grey, "L")
        _png(tmp_path / "train" / "dog" / f"{i}.png", rgba, "RGBA")
    _png(tmp_path / "valid" / "cat" / "0.png", np.full((4, 4, 3), [10, 20, 30], np.uint8), "P")
    _png(tmp_path / "valid" / "dog" / "0.png", grey, "L")
    data = load_source(tmp_path, kind="image")
    assert data.label_names == ["cat", "dog"] and len(data.train) == 6 and len(data.val) == 2
    x = data.train.inputs
    assert x.shape == (6, 4, 4, 3)
    np.testing.assert_array_equal(x[data.train.labels == 0], 100)
    np.testing.assert_array_equal(x[data.train.labels == 1], 255)
    np.testing.assert_array_equal(data.val.inputs[data.val.labels == 0][0, 0, 0], [10, 20, 30])
    assert "its own split" in data.description


# ------------------------------------------------------------------------------------------------- text


def test_rotten_tomatoes_parquet_uses_its_validation_split(rt_parquet, rt_tables):
    """Catches: a hold-out taken although the source has a validation split, texts or labels reordered."""
    data = load_source(rt_parquet, kind="text")
    assert data.label_names == ["neg", "pos"]
    assert data.train.inputs == rt_tables["train"]["text"].to_pylist()  # all of train, no hold-out
    assert data.val.inputs == rt_tables["validation"]["text"].to_pylist()
    assert list(data.val.labels) == rt_tables["validation"]["label"].to_pylist()
    assert data.test.inputs == rt_tables["test"]["text"].to_pylist()
    assert data.val.split == "validation" and data.train.labels.dtype == np.int64


def test_csv_string_labels_and_jsonl_int_labels(tmp_path, rt_tables):
    """Catches: string labels not sorted into names, `labels=` not fixing the order, integer labels without names not
    named "0".."K-1", integer labels not indexing `labels=`."""
    truth = np.asarray(rt_tables["train"]["label"].to_pylist())
    csv = _write_csv(tmp_path / "rt.csv", _rt_records(rt_tables, names=True))
    data = load_source(csv, kind="text", val_fraction=0.25)
    assert data.label_names == ["neg", "pos"] and data.test is None
    assert len(data.train) == 90 and len(data.val) == 30
    texts = rt_tables["train"]["text"].to_pylist()
    assert [truth[texts.index(t)] for t in data.train.inputs] == list(data.train.labels)
    flipped = load_source(csv, kind="text", val_fraction=0.25, labels=["pos", "neg"])
    assert flipped.label_names == ["pos", "neg"] and flipped.train.inputs == data.train.inputs
    np.testing.assert_array_equal(flipped.train.labels, 1 - data.train.labels)
    jsonl = _write_jsonl(tmp_path / "rt.jsonl", _rt_records(rt_tables, names=False))
    ints = load_source(jsonl, kind="text", val_fraction=0.25)
    assert ints.label_names == ["0", "1"] and ints.train.inputs == data.train.inputs
    np.testing.assert_array_equal(ints.train.labels, data.train.labels)
    named = load_source(jsonl, kind="text", val_fraction=0.25, labels=["neg", "pos"])
    assert named.label_names == ["neg", "pos"]
    np.testing.assert_array_equal(named.train.labels, data.train.labels)


# ------------------------------------------------------------------------------------------------- errors


def test_missing_column_names_file_and_columns(tmp_path, rt_tables, usps_parquet):
    csv = _write_csv(tmp_path / "rt.csv", _rt_records(rt_tables, names=True))
    with pytest.raises(ValueError, match=r"rt\.csv: no text column 'review'; available columns: text .*label"):
        load_source(csv, kind="text", text_column="review")
    with pytest.raises(ValueError, match=r"rt\.csv: no label column 'sentiment'; available columns: text"):
        load_source(csv, kind="text", label_column="sentiment")
    with pytest.raises(ValueError, match=r"train\.parquet: no text column 'text' and none of that type.*image \(Image\)"):
        load_source(usps_parquet, kind="text")


def test_unknown_label_names_file_row_and_value(tmp_path, rt_tables):
    records = _rt_records(rt_tables, names=True)
    first_neg = next(i for i, r in enumerate(records) if r["label"] == "neg")
    csv = _write_csv(tmp_path / "rt.csv", records)
    with pytest.raises(ValueError, match=rf"rt\.csv, row {first_neg}: label 'neg' is not one of the model's labels \(pos\)"):
        load_source(csv, kind="text", labels=["pos"])
    records = _rt_records(rt_tables, names=False)
    records[7]["label"] = 5
    jsonl = _write_jsonl(tmp_path / "rt.jsonl", records)
    with pytest.raises(ValueError, match=r"rt\.jsonl, row 7: label 5 is outside the model's 2 labels"):
        load_source(jsonl, kind="text", labels=["neg", "pos"])


def test_label_outside_classlabel_names(tmp_path, usps_rows):
    labels = usps_rows["label"].to_numpy().copy()
    labels[11] = 10  # ClassLabel has names 0..9
    table = usps_rows.set_column(1, "label", pa.array(labels)).replace_schema_metadata(usps_rows.schema.metadata)
    pq.write_table(table, tmp_path / "train.parquet")
    with pytest.raises(ValueError, match=r"train\.parquet, row 11: label 10 is outside the 10 class names"):
        load_source(tmp_path, kind="image")


def test_missing_text_and_missing_label_name_row_and_column(tmp_path, rt_tables):
    records = _rt_records(rt_tables, names=False)
    records[3]["text"] = None
    with pytest.raises(ValueError, match=r"rt\.jsonl, row 3: text column 'text' is empty"):
        load_source(_write_jsonl(tmp_path / "rt.jsonl", records), kind="text")
    records = _rt_records(rt_tables, names=False)
    records[4]["label"] = ""  # an empty CSV cell: the int column becomes float with a gap
    with pytest.raises(ValueError, match=r"rt\.csv, row 4: label column 'label' is empty"):
        load_source(_write_csv(tmp_path / "rt.csv", records), kind="text")


def test_corrupt_image_in_parquet_names_file_and_row(tmp_path, usps_rows):
    cells = usps_rows["image"].to_pylist()
    cells[7] = {"bytes": cells[7]["bytes"][:30], "path": None}  # a truncated PNG
    table = usps_rows.set_column(0, usps_rows.schema.field("image"), pa.array(cells, usps_rows.schema.field("image").type))
    pq.write_table(table.replace_schema_metadata(usps_rows.schema.metadata), tmp_path / "train.parquet")
    with pytest.raises(ValueError, match=r"train\.parquet, row 7: cannot decode image in column 'image'"):
        load_source(tmp_path, kind="image")


def test_corrupt_image_and_mixed_sizes_in_imagefolder_name_the_file(tmp_path):
    for i in range(4):
        _png(tmp_path / "a" / f"{i}.png", np.zeros((8, 8), np.uint8), "L")
        _png(tmp_path / "b" / f"{i}.png", np.zeros((8, 8), np.uint8), "L")
    (tmp_path / "b" / "2.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"row \d+ \(.*b/2\.png\): cannot decode image"):
        load_source(tmp_path, kind="image", val_fraction=0.25)
    _png(tmp_path / "b" / "2.png", np.zeros((9, 8), np.uint8), "L")
    with pytest.raises(ValueError, match=r"row \d+: image is 9x8 \(height x width\) but row 0 is 8x8"):
        load_source(tmp_path, kind="image", val_fraction=0.25)


def test_empty_split_is_named(tmp_path, usps_rows):
    """Catches: empty splits passed on (or failing deep inside `datasets`), a hold-out that leaves validation empty."""
    pq.write_table(usps_rows, tmp_path / "train.parquet")
    pq.write_table(usps_rows.slice(0, 0), tmp_path / "test.parquet")
    with pytest.raises(ValueError, match=r"test\.parquet: split 'test' is empty \(0 rows\)"):
        load_source(tmp_path, kind="image")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(ValueError, match=r"header\.csv: split 'train' is empty"):
        load_source(tmp_path / "header.csv", kind="text")
    one = _write_jsonl(tmp_path / "one.jsonl", [{"text": "fine .", "label": 1}, {"text": "bad .", "label": 0}])
    with pytest.raises(ValueError, match=r"one\.jsonl: the val split is empty after holding out"):
        load_source(one, kind="text")


def test_missing_path_and_unreachable_hub_id_fail_fast(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"no-such-dir/reviews\.csv: no such file or folder"):
        load_source(tmp_path / "no-such-dir" / "reviews.csv", kind="text")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_source("not/a valid/id", kind="text")
    with pytest.raises(ValueError, match=r"'nobody-zoo/no-such-dataset' is not a local file or folder, and loading it as a Hugging Face"):
        load_source("nobody-zoo/no-such-dataset", kind="text")
    assert time.monotonic() - start < 10


# ------------------------------------------------------------------------------------------------- adapt


def test_to_grey_matches_pil():
    """Catches: float luma weights or truncating instead of PIL's fixed-point rounding."""
    rgb = np.random.default_rng(0).integers(0, 256, (3, 17, 13, 3), dtype=np.uint8)
    want = np.stack([np.asarray(Image.fromarray(x, "RGB").convert("L")) for x in rgb])[..., None]
    np.testing.assert_array_equal(adapt.to_grey(rgb), want)


def _com(images: np.ndarray) -> np.ndarray:
    x = images[..., 0].astype(np.float64)
    m = x.sum((1, 2))
    return np.stack([(x.sum(2) * np.arange(x.shape[1])).sum(1) / m, (x.sum(1) * np.arange(x.shape[2])).sum(1) / m], 1)


def test_mnist_frame_on_real_usps_digits(usps_rows):
    """Catches: the box not fitted to 20 pixels, the centre of mass not moved to (14, 14), x and y swapped."""
    digits = np.stack([_decode(c["bytes"]) for c in usps_rows["image"].to_pylist()[:60]])[..., None]
    framed = adapt.mnist_frame(digits)
    assert framed.dtype == np.uint8 and framed.shape == (60, 28, 28, 1)
    ink = framed[..., 0] > 0
    rows, cols = ink.any(2), ink.any(1)
    height = 28 - rows.argmax(1) - rows[:, ::-1].argmax(1)
    width = 28 - cols.argmax(1) - cols[:, ::-1].argmax(1)
    assert np.all(np.maximum(height, width) <= 20) and np.all(np.maximum(height, width) >= 19)
    assert np.all(np.abs(_com(framed) - 14.0) <= 1.0)


def test_mnist_frame_synthetic_and_empty():
    """A solid 10x5 block (off-centre in 16x16) must become a solid 20x10 block with its centre of mass (9.5, 4.5)
    moved to (14, 14): offset (4.5, 9.5) rounded half up -> rows 5..24, columns 10..19. Catches: aspect ratio not
    kept, wrong box size, wrong offset, swapped axes. An empty image stays black."""
    image = np.zeros((2, 16, 16, 1), np.uint8)
    image[0, 1:11, 9:14] = 255
    want = np.zeros((28, 28), np.uint8)
    want[5:25, 10:20] = 255
    framed = adapt.mnist_frame(image)
    np.testing.assert_array_equal(framed[0, ..., 0], want)
    assert not framed[1].any()


def test_mnist_frame_keeps_a_lopsided_digit_on_the_canvas():
    """Mass concentrated at the top would need a shift past the edge: the box is clamped, so no ink is cut off."""
    image = np.zeros((1, 16, 16, 1), np.uint8)
    image[0, 0, :] = 255
    image[0, :, 0] = 1
    framed = adapt.mnist_frame(image)[0, ..., 0]
    rows = np.flatnonzero(framed.any(1))
    assert rows[0] == 8 and rows[-1] - rows[0] + 1 == 20  # clamped at 28 - 20; all 20 rows of the box kept


def test_adapt_images_rules_and_errors(usps_rows):
    """Catches: unhandled mismatches passing silently, the colour rule applied after (or instead of) the resize."""
    grey = np.stack([_decode(c["bytes"]) for c in usps_rows["image"].to_pylist()[:4]])[..., None]
    colour = np.repeat(grey, 3, axis=3)
    target = {"kind": "image", "height": 28, "width": 28, "channels": 1}
    with pytest.raises(ValueError, match="expects 1: set colour 'luma'"):
        adapt.adapt_images(colour, {"resize": "mnist_frame"}, target)
    with pytest.raises(ValueError, match="images are 16x16 but the model expects 28x28: set resize 'mnist_frame'"):
        adapt.adapt_images(grey, {}, target)
    with pytest.raises(ValueError, match="unknown resize rule"):
        adapt.adapt_images(grey, {"resize": "stretch"}, target)
    out = adapt.adapt_images(colour, {"colour": "luma", "resize": "mnist_frame"}, target)
    np.testing.assert_array_equal(out, adapt.mnist_frame(grey))
    plain = adapt.adapt_images(grey, {"resize": "resize"}, target)
    want = np.asarray(Image.fromarray(grey[0, ..., 0]).resize((28, 28), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(plain[0, ..., 0], want)
    np.testing.assert_array_equal(adapt.adapt_images(plain, {"colour": None, "resize": None}, target), plain)
    json.dumps(adapt.check_rule({"resize": "mnist_frame"}))  # JSON-able, for the checkpoint's preprocessing


def test_unk_rate_with_the_imdb_tokenizer():
    """Catches: counting texts or characters instead of tokens, or the wrong [UNK] id. 'zzqxv' and 'blorptastic'
    are not in the IMDb vocabulary; every other token is (punctuation is a token)."""
    from zoo.registry import get_spec

    tokenizer = get_spec("lstm-imdb").tokenizer_json
    texts = ["The movie was great.", "zzqxv movie", "blorptastic zzqxv !"]  # 5 + 2 + 3 tokens, 3 unknown
    assert adapt.unk_rate(texts, tokenizer) == pytest.approx(3 / 10)
    assert adapt.unk_rate(["the film"], tokenizer) == 0.0
