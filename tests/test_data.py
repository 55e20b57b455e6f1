"""The shared data pipeline: real data through `datasets`, seeded order, rank slices, augmentation."""

import numpy as np
import pytest

from zoo.data import load_split
from zoo.data.pipeline import augment_images, batches, epoch_order, load_datasets
from zoo.registry import get_spec


def test_mnist_and_imdb_load_through_datasets(data_dir):
    mnist = load_split("mnist", "test", data_dir)
    assert mnist.inputs.shape == (10000, 28, 28, 1) and mnist.inputs.dtype == np.uint8
    assert np.bincount(mnist.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(mnist.inputs.mean() - 33.7912) < 1e-3  # the README's checksum-like statistic
    imdb = load_split("imdb", "test", data_dir)
    assert len(imdb) == 25000 and imdb.labels[:12500].max() == 0 and imdb.labels[12500:].min() == 1


def test_missing_local_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist/train.parquet"):
        load_split("mnist", "train", tmp_path)


def test_validation_is_held_out_of_train_and_seeded(data_dir):
    spec = get_spec("cnn-mnist")
    a = load_datasets(spec, data_dir, val_fraction=0.1, seed=0)
    b = load_datasets(spec, data_dir, val_fraction=0.1, seed=0)
    assert len(a["train"]) == 54000 and len(a["val"]) == 6000 and len(a["test"]) == 10000
    assert np.array_equal(a["val"].inputs, b["val"].inputs)
    train_bytes = {x.tobytes() for x in a["train"].inputs[:, :, :, 0]}
    assert not any(x.tobytes() in train_bytes for x in a["val"].inputs[:500, :, :, 0])  # MNIST has no duplicates


def test_same_seed_same_batches_and_rank_slices_cover_the_global_batch(data_dir):
    spec = get_spec("cnn-mnist")
    data = load_datasets(spec, data_dir)["val"]
    first = list(batches(data, spec, 64, seed=3, epoch=1, augment=True))
    again = list(batches(data, spec, 64, seed=3, epoch=1, augment=True))
    assert all(np.array_equal(x1, x2) and np.array_equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, again, strict=True))
    other_epoch = next(batches(data, spec, 64, seed=3, epoch=2))
    assert not np.array_equal(other_epoch[1], first[0][1])
    ranks = [next(batches(data, spec, 64, seed=3, epoch=1, augment=True, rank=r, world_size=4)) for r in range(4)]
    assert np.array_equal(np.concatenate([x for x, _ in ranks]), first[0][0])
    resumed = list(batches(data, spec, 64, seed=3, epoch=1, augment=True, start_step=5))
    assert np.array_equal(resumed[0][0], first[5][0])


def test_text_batches_are_bucketed_and_padded_to_multiples_of_32(data_dir):
    spec = get_spec("lstm-imdb")
    data = load_datasets(spec, data_dir)["val"]
    order = epoch_order(len(data), 0, 0, 64, np.array([len(s) for s in data.inputs]))
    assert sorted(order.tolist()) == list(range(len(data)))
    widths = []
    for ids, _ in batches(data, spec, 64, seed=0, epoch=0):
        lengths = (ids != 0).sum(1)
        assert ids.shape[1] % 32 == 0 or ids.shape[1] == 256
        assert ids.shape[1] - lengths.max() < 32 and lengths.min() >= 1
        widths.append(ids.shape[1])
    assert np.mean(widths) < 256  # bucketing saves padding


def test_augmentation_keeps_digits_recognisable():
    rng = np.random.default_rng(0)
    img = np.zeros((1, 28, 28, 1), np.uint8)
    img[0, 10:18, 12:16] = 255
    out = augment_images(np.repeat(img, 16, 0), rng)
    assert out.dtype == np.uint8 and out.shape == (16, 28, 28, 1)
    ink = out.astype(float).sum((1, 2, 3)) / img.sum()
    assert np.all((ink > 0.7) & (ink < 1.4))  # scaled by at most ~1.1^2, nothing lost off-canvas
    assert len({o.tobytes() for o in out}) == 16
