"""Exit codes of the command-line tools, in one place: 0 ok, 1 some inputs failed (the rest processed),
2 usage error (a bad flag, or a file named by one that cannot be used), 130 interrupted."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from ..errors import CropClassifierError, error_line

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The tools' ``--help``: the description as written, every option's default after its help. A required
    option has none; one whose default is ``None`` and whose help already says what the default is keeps its
    own words. (argparse shows a default only where an option has help: give every option some.)"""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or (action.default is None and "default" in text):
            return text
        return super()._get_help_string(action)


def run_tool(step: Callable[[], str]) -> int:
    """Runs ``step`` (returns the line to print); every error the package raises on purpose, a bad value or an
    unreadable/unwritable file becomes one ``error:`` line on stderr and exit 2 (the one input failed)."""
    try:
        print(step())
    except KeyboardInterrupt:
        print("interrupted: nothing was written (outputs are written atomically)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CropClassifierError, ValueError, OSError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
