"""User-facing errors.

A ``UserError`` is a mistake the user can fix (bad config value, missing model folder, unknown
word in a prompt). Its message is a single line naming the offending field and the fix; the CLI
prints it without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A fixable user mistake; ``str(err)`` is one line: ``<field>: <problem> — <fix>``."""

    def __init__(self, message: str) -> None:
        # Keep the contract "one line" even if a caller formats a multi-line message.
        super().__init__(" ".join(str(message).split()))
