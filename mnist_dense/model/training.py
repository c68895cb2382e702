"""Training the network: `train` sets Keras up, builds the model and runs the epochs, each
epoch one TensorFlow graph.

Keras' `model.fit` pulls every mini-batch through a tf.data iterator and returns to Python
between groups of steps; for a network this small that bookkeeping costs more than the
arithmetic. Here the arrays sit in memory as tensors, each epoch's shuffled order is drawn
in the graph from (seed, epoch), and one `tf.function` runs all of the epoch's steps. The
model, loss and optimizer are Keras' own, so the math is that of `model.fit`: mini-batch
gradient steps over a fresh permutation per epoch, loss and accuracy averaged over the
epoch's samples as they are seen, validation after each epoch.
"""

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from mnist_dense.config import Params
from mnist_dense.errors import PipelineError, first_line
from mnist_dense.model.augment import Distort
from mnist_dense.model.network import (
    EVAL_BATCH,
    build_model,
    configure_threads,
    make_loss,
    make_optimizer,
    precision_policy,
    probabilities,
)
from mnist_dense.model.progress import epoch_line
from mnist_dense.runtime.cli import raise_if_interrupted

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
EpochCallback = Callable[[int, dict[str, float]], None]  # (epoch, its scores)


class Trained(NamedTuple):
    model: keras.Model
    history: pd.DataFrame  # one row per epoch: HISTORY_COLUMNS
    precision: str  # the dtype policy it trained in (train.precision, as this CPU allows)


def train(params: Params, arrays: dict[str, np.ndarray], on_epoch_end: EpochCallback) -> Trained:
    """Build the network `params.train` describes and train it on arrays' x_train/y_train,
    validating on x_val/y_val after each epoch: the same params and data give the same
    weights, bit for bit, on the same kernel path.

    Keras' global state (seed, determinism, dtype policy, threads) is set here and only here;
    the dtype policy goes back to float32 afterwards, so a process that trains twice (a
    test) starts each training alike. `on_epoch_end(epoch, scores)` gets each epoch's loss,
    accuracy, val_loss and val_accuracy.
    """
    p = params.train
    precision = precision_policy(p.precision)
    configure_threads(p.threads)
    keras.utils.set_random_seed(p.seed)
    tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_model(p, precision)
        trainer = EpochTrainer(
            model,
            make_optimizer(p, steps_per_epoch=math.ceil(len(arrays["x_train"]) / p.batch_size)),
            make_loss(p),
            arrays["x_train"],
            arrays["y_train"],
            p.batch_size,
            p.seed,
            Distort(params.augment) if params.augment.enabled else None,
        )
        epochs = run_epochs(trainer, (arrays["x_val"], arrays["y_val"]), p.epochs, on_epoch_end)
    except (tf.errors.ResourceExhaustedError, MemoryError) as error:
        raise PipelineError(
            f"out of memory training {p.hidden_units} hidden units at batch {p.batch_size} "
            f"({first_line(error, limit=160)}); lower train.hidden_units or train.batch_size"
        ) from None
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return Trained(model, history_table(epochs), precision)


def history_table(epochs: list[dict[str, float]]) -> pd.DataFrame:
    """The per-epoch scores as metrics/history.csv holds them."""
    history = pd.DataFrame(epochs, columns=HISTORY_COLUMNS[1:])
    history.insert(0, "epoch", range(1, len(history) + 1))
    return history


def _accuracy_counts(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """How many rows are classified correctly (integer labels)."""
    predicted = tf.argmax(probabilities, axis=1, output_type=tf.int32)
    return tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32))


class EpochTrainer:
    """Trains `model` on (x, y) one whole epoch per call, entirely inside TensorFlow."""

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        loss: keras.losses.Loss,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        seed: int,
        distort: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
    ) -> None:
        """`distort(images, seed)`, when given, redraws each mini-batch (model/augment.py)."""
        self.model, self.optimizer, self.loss = model, optimizer, loss
        self.distort = distort
        self.x, self.y = tf.constant(x), tf.constant(y)
        self.count = len(x)
        self.batch_size = batch_size
        self.steps = math.ceil(self.count / batch_size)
        self.seed = tf.constant(seed, tf.int32)
        self.optimizer.build(model.trainable_variables)
        self._epoch = tf.function(self._train_epoch)
        self._predict = tf.function(lambda x: probabilities(model, x))

    def order(self, epoch: tf.Tensor) -> tf.Tensor:
        """The epoch's order of the training samples: a permutation drawn from (seed, epoch)."""
        return tf.random.experimental.stateless_shuffle(
            tf.range(self.count), seed=tf.stack([self.seed, tf.cast(epoch, tf.int32)])
        )

    def _train_epoch(self, epoch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        order = self.order(epoch)
        loss_sum = tf.constant(0.0)
        correct = tf.constant(0.0)
        for step in tf.range(self.steps):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            x, y = tf.gather(self.x, batch), tf.gather(self.y, batch)
            if self.distort is not None:  # fresh distortions per (seed, epoch, step)
                x = self.distort(x, tf.stack([self.seed, epoch * self.steps + step]))
            with tf.GradientTape() as tape:
                probabilities = self.model(x, training=True)
                loss = self.loss(y, probabilities)
            gradients = tape.gradient(loss, self.model.trainable_variables)
            self.optimizer.apply(gradients, self.model.trainable_variables)
            size = tf.cast(tf.shape(batch)[0], tf.float32)
            loss_sum += loss * size
            correct += _accuracy_counts(y, probabilities)
        return loss_sum / self.count, correct / self.count

    def train_epoch(self, epoch: int) -> dict[str, float]:
        loss, accuracy = self._epoch(tf.constant(epoch, tf.int32))
        return {"loss": float(loss), "accuracy": float(accuracy)}

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Loss and accuracy on held-out data, in batches of EVAL_BATCH; with the weights'
        moving average (train.ema) when the optimizer keeps one, as the saved model will be."""
        if not self.optimizer.use_ema:
            return self._evaluate(x, y)
        variables = self.model.trainable_variables
        training = [variable.numpy() for variable in variables]
        self.optimizer.finalize_variable_values(variables)  # the averages, for now
        try:
            return self._evaluate(x, y)
        finally:
            for variable, value in zip(variables, training, strict=True):
                variable.assign(value)  # training goes on from its own weights

    def finish(self) -> None:
        """Leave the model with the weights it is saved with: the moving average, if any."""
        if self.optimizer.use_ema:
            self.optimizer.finalize_variable_values(self.model.trainable_variables)

    def _evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        loss_sum = correct = 0.0
        for start in range(0, len(x), EVAL_BATCH):
            xb, yb = x[start : start + EVAL_BATCH], y[start : start + EVAL_BATCH]
            probabilities = self._predict(tf.constant(xb))
            loss_sum += float(self.loss(yb, probabilities)) * len(xb)
            correct += float(_accuracy_counts(tf.constant(yb), probabilities))
        return {"loss": loss_sum / len(x), "accuracy": correct / len(x)}


def run_epochs(
    trainer: EpochTrainer,
    validation: tuple[np.ndarray, np.ndarray],
    epochs: int,
    on_epoch_end: EpochCallback,
) -> list[dict[str, float]]:
    """Train for `epochs`; after each, report its {loss, accuracy, val_loss, val_accuracy}."""
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        scores = trainer.train_epoch(epoch)
        raise_if_interrupted()  # in case TensorFlow swallowed a Ctrl-C mid-epoch
        validated = trainer.evaluate(*validation)
        scores |= {"val_loss": validated["loss"], "val_accuracy": validated["accuracy"]}
        print(epoch_line(epoch, epochs, time.perf_counter() - started, scores), flush=True)
        history.append(scores)
        on_epoch_end(epoch, scores)
    trainer.finish()
    return history
