"""The network, its optimizer, and how it is saved and loaded.

A dense (fully connected) classifier: 784 pixels -> hidden Dense layers (each followed by
dropout when train.dropout > 0) -> 10 softmax outputs. Everything comes from params.yaml.
"""

import json
import os
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mnist_dense.config import AS_DRAWN, CLASSES, PIXELS, Normalization, TrainParams
from mnist_dense.data.normalize import METADATA_KEY
from mnist_dense.files import atomic_path
from mnist_dense.runtime.kernels import cpu_flags

EVAL_BATCH = 2000  # images per forward pass wherever a model scores a data set
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


def build_model(params: TrainParams, precision: str = "float32") -> keras.Sequential:
    """The network, in the global dtype policy `precision` (precision_policy's answer)."""
    model = keras.Sequential(name="mnist_dense")
    model.add(keras.Input(shape=(PIXELS,), name="pixels"))
    for number, units in enumerate(params.hidden_units, start=1):
        # explicit names: Keras' automatic ones count up per process, changing the saved bytes
        if params.batch_norm:  # Dense -> BatchNorm -> activation; the norm's shift is the bias
            model.add(keras.layers.Dense(units, use_bias=False, name=f"hidden_{number}"))
            model.add(keras.layers.BatchNormalization(name=f"batch_norm_{number}"))
            model.add(keras.layers.Activation(params.activation, name=f"activation_{number}"))
        else:
            model.add(
                keras.layers.Dense(units, activation=params.activation, name=f"hidden_{number}")
            )
        if params.dropout > 0:
            model.add(keras.layers.Dropout(params.dropout, name=f"dropout_{number}"))
    # under mixed precision the probabilities (and so the loss) stay float32
    output_dtype = "float32" if precision != "float32" else None
    model.add(keras.layers.Dense(CLASSES, activation="softmax", name="digit", dtype=output_dtype))
    return model


BF16_UNITS = {"avx512_bf16", "amx_bf16"}  # CPUs that multiply bfloat16 natively


def precision_policy(requested: str) -> str:
    """The Keras dtype policy to train with. mixed_bfloat16 (bfloat16 matrix products, float32
    variables and loss) only pays where the CPU has bfloat16 units; elsewhere TensorFlow
    emulates them, slower than float32, so training falls back to float32 with a warning
    (MNIST_BF16=force trains in bfloat16 anyway, as the tests do)."""
    if requested == "float32" or BF16_UNITS & set(cpu_flags()):  # bfloat16: kernels native
        return requested
    if os.environ.get("MNIST_BF16") == "force":
        return requested
    print(
        f"warning: train.precision={requested}: this CPU has no bfloat16 units "
        f"({' or '.join(sorted(BF16_UNITS))}), so bfloat16 would be emulated and slower; "
        "training in float32",
        file=sys.stderr,
    )
    return "float32"


class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam (and AdamW, through `weight_decay`) with each weight tensor updated by
    TensorFlow's single fused kernel, ResourceApplyAdam, instead of Keras' ~20 small ops.

    The formula is Adam's, term for term; only float rounding in the last bits differs. At
    small batches the optimizer's op count dominates a training step, so this is the
    largest single speed-up of the train stage (train.fused_adam, docs/speed.md).
    """

    def update_step(self, gradient, variable, learning_rate) -> None:
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )


def make_optimizer(params: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    learning_rate = params.learning_rate
    warmup = params.warmup_epochs * steps_per_epoch
    if params.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else params.learning_rate,
            decay_steps=params.epochs * steps_per_epoch - warmup,
            warmup_target=params.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    elif warmup:
        learning_rate = WarmupConstant(params.learning_rate, warmup)
    if params.fused_adam and params.optimizer in ("adam", "adamw"):
        optimizer = FusedAdam
    else:  # Keras' own class for the name (Adam, AdamW, SGD, RMSprop)
        optimizer = type(keras.optimizers.get(params.optimizer))
    return optimizer(
        learning_rate=learning_rate,
        weight_decay=params.weight_decay or None,
        use_ema=params.ema > 0,  # EpochTrainer validates and keeps the averaged weights
        ema_momentum=params.ema or 0.99,
        name=params.optimizer,
    )


class WarmupConstant(keras.optimizers.schedules.LearningRateSchedule):
    """A constant learning rate reached by a linear rise from 0 over `warmup_steps`."""

    def __init__(self, learning_rate: float, warmup_steps: int) -> None:
        self.learning_rate, self.warmup_steps = learning_rate, warmup_steps

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        rise = tf.cast(step, tf.float32) / self.warmup_steps
        return self.learning_rate * tf.minimum(1.0, rise)

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


class OneHotCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy of integer labels, one-hot encoded in the graph.

    The data always holds integer labels; this is `train.loss: categorical_crossentropy`,
    and the sparse loss with label smoothing, which Keras' sparse loss lacks.
    """

    def __init__(self, label_smoothing: float) -> None:
        super().__init__(name="one_hot_crossentropy")
        self.label_smoothing = label_smoothing

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        one_hot = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), CLASSES)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, label_smoothing=self.label_smoothing
        )


def make_loss(params: TrainParams) -> keras.losses.Loss:
    """The training loss of integer labels, averaged over each mini-batch."""
    if params.loss == "sparse_categorical_crossentropy" and not params.label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy()
    return OneHotCrossentropy(params.label_smoothing)


def save_model(model: keras.Model, path: Path, how: Normalization = AS_DRAWN) -> None:
    """Save as .keras with reproducible bytes: the same weights give the same file.

    Keras stamps the save time into metadata.json and the zip entries, and numbers shared
    objects in config.json by their memory address; here the times are dropped and the
    numbers made sequential, so DVC's hash of the model changes only when the model does.
    The metadata records the normalization the model was trained with, for predict to apply
    (mnist_dense/data/normalize.py: read_normalization).
    """
    with atomic_path(Path(path)) as temp:
        model.save(temp)
        with zipfile.ZipFile(temp) as archive:
            entries = [(info, archive.read(info)) for info in archive.infolist()]
        with zipfile.ZipFile(temp, "w") as archive:
            for info, data in entries:
                if info.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata.pop("date_saved", None)
                    metadata[METADATA_KEY] = how._asdict()
                    data = json.dumps(metadata).encode()
                elif info.filename == "config.json":
                    data = json.dumps(_number_shared_objects(json.loads(data), {})).encode()
                fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_TIME)
                fixed.compress_type = info.compress_type
                fixed.external_attr = info.external_attr
                archive.writestr(fixed, data)


def _number_shared_objects(node: object, numbers: dict[int, int]) -> object:
    """Replace each `shared_object_id` (an address) by 1, 2, ... in order of appearance."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "shared_object_id":
                node[key] = numbers.setdefault(value, len(numbers) + 1)
            else:
                _number_shared_objects(value, numbers)
    elif isinstance(node, list):
        for item in node:
            _number_shared_objects(item, numbers)
    return node


def configure_threads(threads: int) -> None:
    """Run TensorFlow's ops on `threads` threads (0: TensorFlow's default, all cores).

    The thread count decides how matrix products are split into partial sums, so it changes
    the last bits of the weights and of the predictions (tests/test_kernels.py shows it for
    the predictions); it is a param for that reason, and evaluate uses it too, so the test
    metrics do not depend on how many cores the machine has. TensorFlow
    fixes its thread pools at its first op; in a process that already ran one (a test calling
    the stage in-process) the setting is left as it is.
    """
    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass


def load_model(path: Path) -> keras.Model:
    """Load a .keras model in safe mode: no arbitrary code from the file runs."""
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def probabilities(model: keras.Model, pixels: tf.Tensor) -> tf.Tensor:
    """The model's class probabilities, its softmax taken here with an exact division.

    TensorFlow's Softmax kernel multiplies by Eigen's fast reciprocal, the CPU's RCPPS estimate
    refined by one Newton step, and that estimate is the CPU's own (Intel's and AMD's differ,
    QEMU's is exact): the probabilities differed in the last bit from CPU to CPU, and with them
    every loss taken of them. exp(z - max z) / sum divides as IEEE 754 says, the same on every
    CPU; the arg-max is the Softmax kernel's. The logits are the softmax's input, which Keras
    keeps on its output for its own losses (`_keras_logits`).
    """
    logits = model(pixels, training=False)._keras_logits
    exponentials = tf.exp(logits - tf.reduce_max(logits, axis=-1, keepdims=True))
    return exponentials / tf.reduce_sum(exponentials, axis=-1, keepdims=True)


def predict(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    """Class probabilities for (n, 784) pixels in [0, 1], EVAL_BATCH rows at a time.

    The model is called directly: `model.predict` goes through tf.data, whose graph makes
    TensorFlow 2.21 print an ERROR line about an attribute it does not know.
    """
    pixels = np.asarray(pixels, np.float32).reshape(len(pixels), PIXELS)
    parts = [
        np.asarray(probabilities(model, pixels[start : start + EVAL_BATCH]))
        for start in range(0, len(pixels), EVAL_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, CLASSES), np.float32)
