"""One exception type for every user-facing failure.

The CLI turns a `PrismAudioError` into a single `prismaudio: error: ...` line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""


class PrismAudioError(Exception):
    """Bad input or environment (missing file, corrupt video, invalid config...)."""
