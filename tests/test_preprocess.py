import numpy as np
import pytest

from mnist_dense.config import PROCESSED_DIR, RAW_DIR, Normalization, parse_params
from mnist_dense.data.normalize import normalize
from mnist_dense.errors import PipelineError
from mnist_dense.files import load_arrays
from stages.preprocess import preprocess
from tests.conftest import tiny_params
from tooling.synthetic_mnist import sevens_and_ones, synthetic_digits, write_idx

NAMES = ["x_train", "y_train", "x_val", "y_val", "x_test", "y_test"]


def params(**changes):
    return parse_params(tiny_params(preprocess=changes)).preprocess


def test_writes_scaled_flat_float32_arrays(workdir):
    preprocess(params())
    arrays = load_arrays(PROCESSED_DIR, NAMES)
    assert arrays["x_train"].shape == (240, 784) and arrays["x_val"].shape == (60, 784)
    assert arrays["x_test"].shape == (100, 784) and arrays["y_test"].shape == (100,)
    for name in ("x_train", "x_val", "x_test"):
        assert arrays[name].dtype == np.float32
        assert arrays[name].min() >= 0.0 and arrays[name].max() == 1.0
    images, _ = synthetic_digits(100, seed=len("t10k"))
    assert np.array_equal(arrays["x_test"], images.reshape(100, 784) / np.float32(255))


def test_stratified_split_keeps_class_proportions_and_loses_nothing(workdir):
    preprocess(params())
    arrays = load_arrays(PROCESSED_DIR, NAMES)
    assert np.bincount(arrays["y_val"], minlength=10).tolist() == [6] * 10
    assert np.bincount(arrays["y_train"], minlength=10).tolist() == [24] * 10
    # together the two parts are exactly the original training images
    _, labels = synthetic_digits(300, seed=len("train"))
    assert sorted(np.concatenate([arrays["y_train"], arrays["y_val"]])) == sorted(labels)


def test_split_is_deterministic_under_its_seed(workdir):
    first = preprocess(params(seed=1))
    again = preprocess(params(seed=1))
    other = preprocess(params(seed=2))
    assert all(np.array_equal(first[n], again[n]) for n in NAMES)
    assert not np.array_equal(first["x_val"], other["x_val"])


def test_tail_split_holds_out_the_last_images_like_keras(workdir):
    arrays = preprocess(params(split="tail"))
    images, labels = synthetic_digits(300, seed=len("train"))
    assert np.array_equal(arrays["x_val"], images[240:].reshape(60, 784) / np.float32(255))
    assert np.array_equal(arrays["y_train"], labels[:240])


def test_labels_are_always_integer_digits(workdir):
    arrays = preprocess(parse_params(tiny_params()).preprocess)
    for name in ("y_train", "y_val", "y_test"):
        assert arrays[name].dtype == np.uint8 and arrays[name].ndim == 1, name
        assert set(np.unique(arrays[name])) <= set(range(10)), name


def test_image_and_label_counts_that_disagree(workdir):
    write_idx(RAW_DIR / "t10k-labels-idx1-ubyte.gz", np.zeros(99, np.uint8))
    with pytest.raises(
        PipelineError, match=r"holds 100 images but .*t10k-labels.* holds 99 labels"
    ):
        preprocess(params())
    assert not PROCESSED_DIR.exists()


def test_label_that_is_not_a_digit(workdir):
    write_idx(RAW_DIR / "t10k-labels-idx1-ubyte.gz", np.full(100, 12, np.uint8))
    with pytest.raises(PipelineError, match=r"label 12 is not a digit"):
        preprocess(params())


def test_missing_raw_file(workdir):
    (RAW_DIR / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(PipelineError, match=r"train-images-idx3-ubyte.gz: missing"):
        preprocess(params())


def test_every_array_is_normalized_by_the_shared_function(workdir):
    how = Normalization(deskew=True, stroke_width=2.5)
    plain = preprocess(params())
    normalized = preprocess(params(deskew=True, stroke_width=2.5))
    for name in ("x_train", "x_val", "x_test"):
        assert np.array_equal(normalized[name], normalize(plain[name], how)), name
        assert not np.array_equal(normalized[name], plain[name]), name
    assert all(np.array_equal(plain[n], normalized[n]) for n in ("y_train", "y_val", "y_test"))


def test_crossed_sevens_change_training_sevens_only_before_normalizing(workdir):
    images, labels = sevens_and_ones(150)  # 7s and 1s of a real shape: room for a bar
    write_idx(RAW_DIR / "train-images-idx3-ubyte.gz", images)
    write_idx(RAW_DIR / "train-labels-idx1-ubyte.gz", labels)
    plain = preprocess(params(deskew=True))
    crossed = preprocess(params(deskew=True, crossed_sevens=1.0))
    changed = (crossed["x_train"] != plain["x_train"]).any(axis=1)
    assert changed.any() and set(crossed["y_train"][changed]) == {7}
    for name in ("x_val", "x_test", "y_train", "y_val", "y_test"):
        assert np.array_equal(crossed[name], plain[name]), name
