"""Typed command-line and config-file overrides, and one-line errors for user mistakes.

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False
"""
import sys


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing file, ...): printed as one line, exit code 1."""


def run(main):
    """Call main(); turn a UserError into one line on stderr and a non-zero exit, never a traceback."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
