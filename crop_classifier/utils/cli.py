"""Exit codes of the command-line tools, in one place: 0 ok, 1 some inputs failed (the rest processed),
2 usage error (a bad flag, or a file named by one that cannot be used), 130 interrupted."""
from __future__ import annotations

import sys
from typing import Callable

from ..errors import CropClassifierError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def run_tool(step: Callable[[], str]) -> int:
    """Runs ``step`` (returns the line to print); every error the package raises on purpose, a bad value or an
    unreadable/unwritable file becomes one ``error:`` line on stderr and exit 2 (the one input failed)."""
    try:
        print(step())
    except KeyboardInterrupt:
        print("interrupted: nothing was written (outputs are written atomically)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CropClassifierError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
