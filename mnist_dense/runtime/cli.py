"""Run a stage as a command: problems the user can fix print one line and exit non-zero."""

import signal
import sys
import traceback
from collections.abc import Callable

from mnist_dense.errors import KernelPathError, PipelineError
from mnist_dense.runtime.process import verbose


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or a polite kill (SIGTERM): unwind so no partial output is left."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []


def _raise_interrupted(signum: int, _frame: object) -> None:
    _received.append(signum)
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise again for a signal whose exception a library swallowed.

    A KeyboardInterrupt raised while TensorFlow is calling back into Python can be lost;
    the training loop calls this between steps so Ctrl-C always stops it.
    """
    if _received:
        raise Interrupted(_received[-1])


def run(main: Callable[[], None]) -> None:
    """Call `main`, turning an expected failure into one line on stderr and an exit code.

    PipelineError, KernelPathError and OSError (disk full, permission denied, ...) exit 1;
    SIGINT and SIGTERM exit 128 + the signal number, after the temporary files are cleaned
    up. Set
    MNIST_VERBOSE=1 to see the traceback as well.
    """
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        main()
    except (PipelineError, OSError, KernelPathError) as error:
        if verbose():
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as interrupt:
        signum = getattr(interrupt, "signum", signal.SIGINT)
        if verbose():
            traceback.print_exc()
        print(
            f"error: interrupted ({signal.Signals(signum).name}); no partial output was left, "
            "run `dvc repro` to start again",
            file=sys.stderr,
        )
        sys.exit(128 + signum)
