"""The `ecdit` command with its checkpoint saves paused, for tests/test_stop.py to signal a process
in the middle of a save:

    python -m tests.slow_save MARKER train ...      (the arguments of `ecdit`)

The first save runs as usual; every later one pauses inside orbax's write (the metadata item,
after the save has started and before the step is committed) for PAUSE_S seconds, and creates
the file MARKER when it does. A signal that ends the process during the pause leaves the save
uncommitted, as a power cut there would (the crash test of tests/test_checkpoint.py patches the
same function).
"""
import os
import sys
import time

import orbax.checkpoint as ocp

from ecdit.app.cli import main

PAUSE_S = 120


def pause_saves_after_the_first(marker: str) -> None:
    original = ocp.handlers.JsonCheckpointHandler.async_save
    seen = []

    async def async_save(self, directory, *args, **kwargs):
        seen.append(directory)
        if len(seen) > 1:
            with open(marker, "w") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(PAUSE_S)                                  # a signal's handler runs in here
        return await original(self, directory, *args, **kwargs)

    ocp.handlers.JsonCheckpointHandler.async_save = async_save


if __name__ == "__main__":
    pause_saves_after_the_first(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
