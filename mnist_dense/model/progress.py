"""The line training prints after each epoch, and how a program reading the output parses it.

The tuner prunes trials by it and the tests time server outages by it, so its format lives
here once.
"""

import re
from typing import NamedTuple

_LINE = re.compile(r"^epoch (\d+)/(\d+) - ([\d.]+) s - .*\bval_accuracy ([\d.]+)")


class EpochReport(NamedTuple):
    epoch: int
    epochs: int
    val_accuracy: float


def epoch_line(epoch: int, epochs: int, seconds: float, scores: dict[str, float]) -> str:
    """`epoch 3/25 - 4.1 s - loss 0.1234 - accuracy ... - val_accuracy 0.9812`."""
    figures = " - ".join(f"{name} {value:.4f}" for name, value in scores.items())
    return f"epoch {epoch}/{epochs} - {seconds:.1f} s - {figures}"


def parse_epoch_line(line: str) -> EpochReport | None:
    """The epoch, the planned epochs and the validation accuracy of an epoch line; None for
    any other line."""
    found = _LINE.match(line)
    if found is None:
        return None
    return EpochReport(int(found.group(1)), int(found.group(2)), float(found.group(4)))
