"""What every command shares: turning our user-facing errors into one line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ltx2_tuner.errors import Ltx2TunerError

EXIT_USER_ERROR = 2


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call `main`; an Ltx2TunerError becomes `error: <message>` on stderr and exit code 2, no traceback."""
    try:
        return main(argv)
    except Ltx2TunerError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
