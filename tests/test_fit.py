"""The in-graph training loop: every sample once per epoch, in a seeded order, Keras' math."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from stages.fit import EpochTrainer, run_epochs


def trainer(count: int, batch_size: int, seed: int = 0, learning_rate: float = 0.0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10, activation="softmax")])
    x = np.arange(count * 4, dtype=np.float32).reshape(count, 4) / (count * 4)
    y = (np.arange(count) % 10).astype(np.uint8)
    optimizer = keras.optimizers.SGD(learning_rate)
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


def test_order_is_seeded_and_new_every_epoch():
    def orders(seed: int) -> list[list[int]]:
        return [
            tf.random.experimental.stateless_shuffle(tf.range(10), seed=[seed, epoch])
            .numpy()
            .tolist()
            for epoch in (1, 2)
        ]

    assert orders(0) == orders(0)
    assert orders(0)[0] != orders(0)[1]
    assert orders(0) != orders(1)
    assert sorted(orders(0)[0]) == list(range(10))


def test_training_lowers_the_loss_and_reports_each_epoch(capsys):
    epoch_trainer, _, x, y = trainer(count=200, batch_size=16, learning_rate=0.5)
    seen = []
    history = run_epochs(epoch_trainer, (x, y), 3, lambda epoch, figures: seen.append(epoch))
    assert seen == [1, 2, 3]
    assert [set(h) for h in history] == [{"loss", "accuracy", "val_loss", "val_accuracy"}] * 3
    assert history[-1]["loss"] < history[0]["loss"]
    assert capsys.readouterr().out.splitlines()[0].startswith("epoch 1/3 - ")
