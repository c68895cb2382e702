"""Run a stage as a command: problems the user can fix print one line and exit non-zero."""

import os
import sys
import traceback
from collections.abc import Callable


class PipelineError(Exception):
    """A problem with the user's data, params or environment; shown as one line, no traceback."""


def run(main: Callable[[], None]) -> None:
    """Call `main`, turning a PipelineError or Ctrl-C into a one-line message and exit code.

    Set MNIST_VERBOSE=1 to see the traceback as well.
    """
    verbose = os.environ.get("MNIST_VERBOSE", "") not in ("", "0")
    try:
        main()
    except PipelineError as error:
        if verbose:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        sys.exit(130)
