import inspect
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

from mnist_dense.config import (
    HISTORY,
    MODEL,
    PER_CLASS,
    PREDICTIONS,
    RUN_INFO,
    TEST_METRICS,
    TRAIN_METRICS,
    load_params,
    parse_params,
)
from mnist_dense.model.network import (
    FusedAdam,
    _number_shared_objects,
    build_model,
    load_model,
    make_loss,
    make_optimizer,
    predict,
)
from mnist_dense.model.training import EpochTrainer
from stages.evaluate import evaluate, score
from stages.preprocess import preprocess
from stages.train import main as train_stage
from tests.conftest import ROOT, sha256, tiny_params, write_params


@pytest.fixture
def processed(workdir):
    preprocess(load_params().preprocess)
    return workdir


def test_model_follows_params():
    params = parse_params(tiny_params(train={"hidden_units": [64, 16], "dropout": 0.25})).train
    model = build_model(params)
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [layer.units for layer in dense] == [64, 16, 10]
    assert [layer.rate for layer in model.layers if hasattr(layer, "rate")] == [0.25, 0.25]
    assert model.count_params() == 784 * 64 + 64 + 64 * 16 + 16 + 16 * 10 + 10
    no_dropout = build_model(parse_params(tiny_params(train={"dropout": 0.0})).train)
    assert not any(hasattr(layer, "rate") for layer in no_dropout.layers)


@pytest.mark.parametrize(
    ("name", "fused", "keras_class"),
    [
        ("adam", False, "Adam"),
        ("adamw", False, "AdamW"),
        ("adam", True, "FusedAdam"),
        ("adamw", True, "FusedAdam"),
        ("sgd", True, "SGD"),
        ("rmsprop", True, "RMSprop"),
    ],
)
def test_optimizer_follows_params(name, fused, keras_class):
    params = parse_params(
        tiny_params(
            train={
                "optimizer": name,
                "fused_adam": fused,
                "learning_rate": 0.05,
                "weight_decay": 0.01,
            }
        )
    ).train
    optimizer = make_optimizer(params, steps_per_epoch=10)
    assert type(optimizer).__name__ == keras_class
    assert float(optimizer.learning_rate) == pytest.approx(0.05)
    assert optimizer.weight_decay == pytest.approx(0.01)


def test_fused_adam_follows_keras_adam_to_the_last_bits():
    """Same formula, one fused kernel per tensor: weights agree to float32 rounding."""
    rng = np.random.default_rng(0)
    start = rng.standard_normal((40, 30)).astype(np.float32)
    gradients = [rng.standard_normal((40, 30)).astype(np.float32) for _ in range(20)]
    results = []
    for optimizer in (
        keras.optimizers.Adam(0.01, weight_decay=0.004),
        FusedAdam(0.01, weight_decay=0.004),
    ):
        variable = keras.Variable(start.copy())
        optimizer.build([variable])
        for gradient in gradients:
            optimizer.apply([gradient], [variable])
        results.append(variable.numpy())
    assert not np.array_equal(results[0], start)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_cosine_schedule_decays_to_zero_along_a_half_cosine():
    params = parse_params(tiny_params(train={"lr_schedule": "cosine", "epochs": 4})).train
    rate = make_optimizer(params, steps_per_epoch=10)._learning_rate
    assert float(rate(0)) == pytest.approx(0.01)
    assert float(rate(10)) == pytest.approx(0.01 * (1 + np.cos(np.pi / 4)) / 2)
    assert float(rate(20)) == pytest.approx(0.005)
    assert float(rate(40)) == pytest.approx(0.0, abs=1e-9)


def test_train_writes_model_history_and_metrics(processed):
    train_stage()
    history = pd.read_csv(HISTORY)
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    final = json.loads(TRAIN_METRICS.read_text())
    assert list(final) == ["val_accuracy", "val_loss"]  # the training set's figures: history
    assert final["val_accuracy"] == history["val_accuracy"].iloc[-1]
    assert final["val_accuracy"] > 0.5  # chance is 0.1
    assert json.loads(RUN_INFO.read_text())["mlflow_run_id"] is None  # tracking off
    assert load_model(MODEL).output_shape == (None, 10)


def test_training_is_bit_for_bit_reproducible_across_processes(processed, run_stage):
    """Two separate trainings (as DVC runs them) give byte-identical outputs."""
    hashes = []
    for _ in range(2):
        assert run_stage("train").returncode == 0
        hashes.append({path: sha256(path) for path in (MODEL, HISTORY, TRAIN_METRICS)})
    assert hashes[0] == hashes[1]
    weights = load_model(MODEL).get_weights()
    assert [w.shape for w in weights] == [(784, 32), (32,), (32, 10), (10,)]


def test_saved_model_config_numbers_shared_objects_by_appearance():
    config = {
        "a": {"shared_object_id": 140001},
        "b": [{"shared_object_id": 99}, {"c": 1}],
        "d": {"shared_object_id": 140001},
    }
    assert _number_shared_objects(config, {}) == {
        "a": {"shared_object_id": 1},
        "b": [{"shared_object_id": 2}, {"c": 1}],
        "d": {"shared_object_id": 1},
    }


def test_the_training_loop_is_three_calls_below_the_stages_main(processed, monkeypatch):
    """main -> training.train -> run_epochs, whose loop calls each epoch: what a reader
    follows from the stage to the gradient steps."""
    callers: list[list[str]] = []
    train_epoch = EpochTrainer.train_epoch

    def spy(trainer: EpochTrainer, epoch: int) -> dict[str, float]:
        names = [frame.function for frame in inspect.stack(context=0)[1:]]
        callers.append(names[: names.index("main") + 1][::-1])
        return train_epoch(trainer, epoch)

    monkeypatch.setattr(EpochTrainer, "train_epoch", spy)
    train_stage()
    assert callers and callers[0] == ["main", "train", "run_epochs"]


def test_another_seed_gives_other_weights(processed):
    train_stage()
    first = sha256(MODEL)
    write_params(processed, train={"seed": 1})
    train_stage()
    assert sha256(MODEL) != first


def test_evaluate_scores_the_model_on_the_test_set(processed):
    train_stage()
    metrics = evaluate(load_params())
    assert json.loads(TEST_METRICS.read_text()) == metrics
    assert set(metrics) == {"test_accuracy", "test_loss", "test_macro_f1"}
    assert 0.5 < metrics["test_accuracy"] <= 1.0 and metrics["test_loss"] > 0
    per_class = pd.read_csv(PER_CLASS)
    assert per_class["digit"].tolist() == list(range(10))
    assert per_class["support"].sum() == 100
    predictions = pd.read_csv(PREDICTIONS)
    assert list(predictions.columns) == ["actual", "predicted"] and len(predictions) == 100
    assert (predictions["actual"] == predictions["predicted"]).mean() == metrics["test_accuracy"]


def test_evaluate_scores_on_the_threads_the_params_give(processed, monkeypatch):
    train_stage()
    asked = []
    monkeypatch.setattr("stages.evaluate.configure_threads", asked.append)
    evaluate(load_params())
    assert asked == [load_params().train.threads]


def test_categorical_loss_trains_on_integer_labels_and_evaluates(workdir):
    write_params(workdir, train={"loss": "categorical_crossentropy"})
    preprocess(load_params().preprocess)
    train_stage()
    assert evaluate(load_params())["test_accuracy"] > 0.5


def test_categorical_loss_is_the_sparse_one_on_one_hot_targets():
    """One param decides the encoding: integer labels, one-hot in the graph for the
    categorical loss, with the same value as Keras' own loss on one-hot arrays."""
    labels = np.array([3, 0, 9, 9], np.uint8)
    probabilities = keras.ops.softmax(np.random.default_rng(1).normal(size=(4, 10)))
    categorical = make_loss(
        parse_params(tiny_params(train={"loss": "categorical_crossentropy"})).train
    )
    reference = keras.losses.CategoricalCrossentropy()(
        np.eye(10, dtype=np.float32)[labels], probabilities
    )
    assert float(categorical(labels, probabilities)) == float(reference)


def test_score_on_known_predictions():
    labels = np.array([0, 1, 2, 2])
    probabilities = np.full((4, 10), 0.01, np.float32)
    probabilities[np.arange(4), [0, 1, 2, 1]] = 0.91
    metrics, per_class = score(labels, probabilities)
    assert metrics["test_accuracy"] == 0.75
    assert metrics["test_loss"] == pytest.approx(
        -np.log(0.91) * 0.75 - np.log(0.01) * 0.25, rel=1e-5
    )
    assert per_class.loc[2, "recall"] == 0.5 and per_class.loc[1, "precision"] == 0.5
    assert per_class["errors"].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]


def test_batch_norm_puts_a_normalization_before_each_hidden_activation():
    params = parse_params(tiny_params(train={"hidden_units": [64, 16], "batch_norm": True})).train
    kinds = [layer.__class__.__name__ for layer in build_model(params).layers]
    assert kinds == ["Dense", "BatchNormalization", "Activation", "Dropout"] * 2 + ["Dense"]
    assert not build_model(params).get_layer("hidden_1").use_bias  # the norm's shift is the bias


def test_label_smoothing_matches_keras_categorical_loss_on_one_hot_labels():
    labels = np.array([3, 0, 9])
    probabilities = keras.ops.softmax(np.random.default_rng(0).normal(size=(3, 10)))
    sparse = make_loss(parse_params(tiny_params(train={"label_smoothing": 0.1})).train)
    reference = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    expected = float(reference(np.eye(10)[labels], probabilities))
    assert float(sparse(labels, probabilities)) == pytest.approx(expected, rel=1e-6)
    plain = make_loss(parse_params(tiny_params()).train)
    assert float(plain(labels, probabilities)) < expected  # smoothing adds the spread's cost


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_warmup_rises_linearly_to_the_learning_rate(schedule):
    change = {"lr_schedule": schedule, "warmup_epochs": 2, "epochs": 4, "learning_rate": 0.01}
    rate = make_optimizer(parse_params(tiny_params(train=change)).train, 10)._learning_rate
    assert [round(float(rate(step)), 6) for step in (0, 10, 20)] == [0.0, 0.005, 0.01]
    assert float(rate(40)) == pytest.approx(0.01 if schedule == "constant" else 0.0, abs=1e-9)


def test_training_with_distortions_and_batch_norm_is_reproducible(processed):
    write_params(
        processed,
        train={"batch_norm": True, "label_smoothing": 0.1, "epochs": 2},
        augment={"rotation": 10.0, "scale": 0.1, "shift": 2.0, "elastic_alpha": 20.0},
    )
    train_stage()
    first, history = sha256(MODEL), pd.read_csv(HISTORY)
    train_stage()
    assert sha256(MODEL) == first
    assert history["val_accuracy"].iloc[-1] > 0.3  # learns through the distortions


def test_mixed_bfloat16_training_is_deterministic_and_keeps_float32_outputs(processed, run_stage):
    """Forced where the CPU lacks bfloat16 units, so the bfloat16 path itself is checked on
    any CPU: two processes give the same bytes, and another model than float32's."""
    write_params(processed, train={"precision": "mixed_bfloat16", "kernels": "native"})
    env = {"MNIST_BF16": "force"}
    hashes = []
    for _ in range(2):
        assert run_stage("train", env).returncode == 0
        hashes.append(sha256(MODEL))
    assert hashes[0] == hashes[1]
    model = load_model(MODEL)
    assert model.get_layer("hidden_1").compute_dtype == "bfloat16"
    assert model.get_layer("digit").compute_dtype == "float32"  # probabilities and loss
    write_params(processed, train={"kernels": "native"})
    assert run_stage("train", env).returncode == 0
    assert sha256(MODEL) != hashes[0]


def test_mixed_bfloat16_falls_back_to_float32_where_bfloat16_is_emulated(
    processed, monkeypatch, run_stage
):
    from mnist_dense.model import network as model_module
    from mnist_dense.runtime.kernels import cpu_flags

    monkeypatch.delenv("MNIST_BF16", raising=False)
    monkeypatch.setattr(model_module, "cpu_flags", lambda: ["avx2", "avx512f"])
    assert model_module.precision_policy("mixed_bfloat16") == "float32"
    monkeypatch.setattr(model_module, "cpu_flags", lambda: ["avx512f", "avx512_bf16"])
    assert model_module.precision_policy("mixed_bfloat16") == "mixed_bfloat16"
    write_params(processed, train={"precision": "mixed_bfloat16", "kernels": "native"})
    result = run_stage("train")
    assert result.returncode == 0, result.stderr
    if model_module.BF16_UNITS & set(cpu_flags()):
        assert "training in float32" not in result.stderr  # a CPU with bfloat16 units
    else:
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("warning:")]
        assert line.startswith("warning: train.precision=mixed_bfloat16: this CPU has no bfloat16")
        assert load_model(MODEL).get_layer("hidden_1").compute_dtype == "float32"


@pytest.mark.slow  # a process of its own
def test_the_benchs_plain_keras_baseline_runs_where_params_ask_for_portable_kernels(processed):
    """bench/baseline.py is plain Keras on the CPU's own kernels; in a folder whose params.yaml
    asks for the portable path, as make bench's folders do, it must still run."""
    from mnist_dense.runtime import kernels

    env = kernels.outside_environment(dict(os.environ))  # as bench/bench.py starts it, by path
    args = ("--hidden", "16", "--epochs", "2", "--batch-size", "32", "--learning-rate", "0.01")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "baseline.py"), "data/processed", *args],
        cwd=processed, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["test_accuracy"] > 0.3


def test_probabilities_are_the_logits_softmax_by_an_exact_division():
    """TensorFlow's Softmax kernel multiplies by a reciprocal each CPU estimates its own way;
    the probabilities every output is made of divide instead, as IEEE 754 rounds a division,
    and keep the kernel's arg-max."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = build_model(parse_params(tiny_params(train={"hidden_units": [64]})).train)
    pixels = np.random.default_rng(0).random((500, 784), np.float32)
    given = predict(model, pixels)
    logits = model(pixels, training=False)._keras_logits
    exponentials = tf.exp(logits - tf.reduce_max(logits, axis=-1, keepdims=True))
    sums = tf.reduce_sum(exponentials, axis=-1, keepdims=True)
    exact = exponentials.numpy() / sums.numpy()  # NumPy's float32 division: IEEE 754's
    assert np.array_equal(given, exact)
    kernel = tf.nn.softmax(logits).numpy()
    assert not np.array_equal(given, kernel)  # the reciprocal's rounding, which this avoids
    assert np.array_equal(given.argmax(axis=1), kernel.argmax(axis=1))
