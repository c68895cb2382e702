"""The in-graph training loop: every sample once per epoch, in a seeded order, Keras' math."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_dense.model.training import EpochTrainer, run_epochs


def trainer(
    count: int, batch_size: int, seed: int = 0, learning_rate: float = 0.0, ema: float = 0.0
):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10, activation="softmax")])
    x = np.arange(count * 4, dtype=np.float32).reshape(count, 4) / (count * 4)
    y = (np.arange(count) % 10).astype(np.uint8)
    optimizer = keras.optimizers.SGD(learning_rate, use_ema=ema > 0, ema_momentum=ema or 0.99)
    return (
        EpochTrainer(
            model, optimizer, keras.losses.SparseCategoricalCrossentropy(), x, y, batch_size, seed
        ),
        model,
        x,
        y,
    )


def test_an_epoch_sees_every_sample_once_including_a_partial_last_batch():
    epoch_trainer, model, x, y = trainer(count=10, batch_size=4)  # batches of 4, 4 and 2
    assert epoch_trainer.steps == 3
    figures = epoch_trainer.train_epoch(1)
    # learning rate 0: weights never change, so the epoch's averages equal a full evaluation
    probabilities = model(x).numpy()
    expected_loss = float(keras.losses.SparseCategoricalCrossentropy()(y, probabilities))
    assert figures["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert figures["accuracy"] == pytest.approx(np.mean(probabilities.argmax(1) == y))
    assert epoch_trainer.evaluate(x, y)["loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_order_is_a_seeded_permutation_new_every_epoch():
    def orders(seed: int) -> list[list[int]]:
        epoch_trainer = trainer(count=10, batch_size=4, seed=seed)[0]
        return [epoch_trainer.order(epoch).numpy().tolist() for epoch in (1, 2)]

    assert orders(0) == orders(0)
    assert orders(0)[0] != orders(0)[1]
    assert orders(0) != orders(1)
    assert sorted(orders(0)[0]) == list(range(10))


def test_an_epoch_takes_its_steps_in_the_epoch_order():
    """The weights after an epoch are those of SGD steps over batches cut from order(epoch)."""
    epoch_trainer, model, x, y = trainer(count=12, batch_size=5, learning_rate=0.5)
    start = [w.numpy().copy() for w in model.trainable_variables]
    order = epoch_trainer.order(2).numpy()
    epoch_trainer.train_epoch(2)
    trained = [w.numpy() for w in model.trainable_variables]

    def sgd_epoch(sample_order: np.ndarray) -> list[np.ndarray]:
        for variable, value in zip(model.trainable_variables, start, strict=True):
            variable.assign(value)
        loss = keras.losses.SparseCategoricalCrossentropy()
        for first in range(0, 12, 5):  # batches of 5, 5 and 2
            batch = sample_order[first : first + 5]
            with tf.GradientTape() as tape:
                value = loss(y[batch], model(x[batch], training=True))
            gradients = tape.gradient(value, model.trainable_variables)
            for variable, gradient in zip(model.trainable_variables, gradients, strict=True):
                variable.assign_sub(0.5 * gradient)
        return [w.numpy().copy() for w in model.trainable_variables]

    for expected, got in zip(sgd_epoch(order), trained, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    in_file_order = sgd_epoch(np.arange(12))
    assert not np.allclose(in_file_order[0], trained[0], rtol=1e-5, atol=1e-6)


def test_training_lowers_the_loss_and_reports_each_epoch(capsys):
    epoch_trainer, _, x, y = trainer(count=200, batch_size=16, learning_rate=0.5)
    seen = []
    history = run_epochs(epoch_trainer, (x, y), 3, lambda epoch, scores: seen.append(epoch))
    assert seen == [1, 2, 3]
    assert [set(h) for h in history] == [{"loss", "accuracy", "val_loss", "val_accuracy"}] * 3
    assert history[-1]["loss"] < history[0]["loss"]
    assert capsys.readouterr().out.splitlines()[0].startswith("epoch 1/3 - ")


def test_a_moving_average_is_validated_and_kept_while_training_follows_its_own_weights():
    runs = {}
    for ema in (0.0, 0.9):
        epoch_trainer, model, x, y = trainer(count=200, batch_size=16, learning_rate=0.5, ema=ema)
        history = run_epochs(epoch_trainer, (x, y), 3, lambda epoch, scores: None)
        kept = epoch_trainer._evaluate(x, y)  # the model as it is left: to be saved
        runs[ema] = history, kept, [w.copy() for w in model.get_weights()]
    (plain, plain_kept, plain_weights), (averaged, averaged_kept, averaged_weights) = runs.values()
    training = [(h["loss"], h["accuracy"]) for h in plain]
    assert [(h["loss"], h["accuracy"]) for h in averaged] == training  # the same steps
    assert averaged[-1]["val_loss"] != plain[-1]["val_loss"]  # validated on the average
    assert averaged_kept["loss"] == averaged[-1]["val_loss"]  # and the average is kept
    assert plain_kept["loss"] == plain[-1]["val_loss"]
    assert not np.array_equal(averaged_weights[0], plain_weights[0])
