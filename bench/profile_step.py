"""Where one training step of the best preset goes: each part timed on its own, per batch.

The profile behind the best preset's speed work (bench section 6): the train step itself
(forward, backward, optimizer) against each training-time distortion, and the elastic
field's smoothing as one matrix product (mnist_dense/model/augment.py) against the two separable
convolutions it replaced. Each part runs STEPS times inside one tf.function, as the
epoch loop runs them; the figure is the median over REPEATS of the time per batch.

    python -m bench.profile_step     (prints Markdown table rows; bench/bench.py runs it)
"""

import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from mnist_dense.config import (
    CLASSES,
    PARAMS_FILE,
    PIXELS,
    SIDE,
    apply,
    load_presets,
    parse_params,
    read_yaml,
)
from mnist_dense.model.augment import Distort
from mnist_dense.model.network import build_model, configure_threads, make_loss, make_optimizer

STEPS = 40
REPEATS = 5


def per_batch_ms(part: Callable[[tf.Tensor], tf.Tensor], images: tf.Tensor) -> float:
    """Median milliseconds per call of `part(images, step)`, run STEPS times in one graph."""

    @tf.function
    def loop() -> tf.Tensor:
        total = tf.constant(0.0)
        for step in tf.range(STEPS):
            total += tf.reduce_sum(part(images, step))
        return total

    loop()  # trace and warm up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        loop().numpy()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / STEPS


def convolution_smoothing(sigma: float) -> Callable[[tf.Tensor], tf.Tensor]:
    """The replaced smoothing: (n, 784) noise -> two separable Gaussian convolutions."""
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = tf.constant((taps / taps.sum()).astype(np.float32))
    across, down = tf.reshape(taps, [1, -1, 1, 1]), tf.reshape(taps, [-1, 1, 1, 1])

    def smooth(noise: tf.Tensor) -> tf.Tensor:
        field = tf.reshape(noise, [-1, SIDE, SIDE, 1])
        field = tf.nn.conv2d(field, across, strides=1, padding="SAME")
        return tf.reshape(tf.nn.conv2d(field, down, strides=1, padding="SAME"), [-1, SIDE * SIDE])

    return smooth


def main() -> None:
    tf.get_logger().setLevel("ERROR")  # one new graph per part is intended, not retracing
    best = load_presets()["best"]["overrides"]
    params = parse_params(apply(read_yaml(PARAMS_FILE.read_text()), best))
    train, augment = params.train, params.augment
    configure_threads(train.threads)
    batch = train.batch_size
    images = tf.random.stateless_uniform([batch, PIXELS], [1, 2])
    labels = tf.random.stateless_uniform([batch], [3, 4], 0, CLASSES, tf.int32)
    seed = tf.constant(7, tf.int32)

    model = build_model(train)
    optimizer, loss = make_optimizer(train, steps_per_epoch=100), make_loss(train)
    optimizer.build(model.trainable_variables)

    def train_step(x: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            value = loss(labels, model(x, training=True))
        gradients = tape.gradient(value, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return value

    def only(**kept: float) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
        """The best preset's distortions with every other kind switched off."""
        off = dict.fromkeys(("rotation", "scale", "shift", "elastic_alpha", "shear"), 0.0)
        distort = Distort(augment.model_copy(update=off | {"stroke": 0.0, "low_res": 0.0} | kept))
        return lambda x, step: distort(x, tf.stack([seed, step]))

    geometry = {k: getattr(augment, k) for k in ("rotation", "scale", "shift", "shear")}
    elastic = {k: getattr(augment, k) for k in ("elastic_alpha", "elastic_sigma")}
    distort_all = Distort(augment)
    noise = tf.random.stateless_uniform([2 * batch, SIDE * SIDE], [5, 6], -1.0, 1.0)
    matrix = Distort(augment).smoothing
    convolutions = convolution_smoothing(augment.elastic_sigma)
    parts = [
        ("train step: forward, backward, optimizer (no distortions)", train_step, images),
        (
            "every distortion of the preset",
            lambda x, step: distort_all(x, tf.stack([seed, step])),
            images,
        ),
        ("affine and slant (one bilinear resampling)", only(**geometry), images),
        ("the same plus the elastic field", only(**geometry, **elastic), images),
        ("pen width (3x3 grayscale dilation or erosion)", only(stroke=augment.stroke), images),
        ("low-resolution round trip", only(low_res=augment.low_res), images),
        ("elastic smoothing as one 784x784 matrix product", lambda n, step: n @ matrix, noise),
        (
            "elastic smoothing as two separable convolutions (before)",
            lambda n, s: convolutions(n),
            noise,
        ),
    ]
    print(f"| part (batch of {batch}) | time per batch |")
    print("|---|---|")
    for name, part, data in parts:
        print(f"| {name} | {per_batch_ms(part, data):.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
