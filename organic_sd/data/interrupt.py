"""Ctrl-C as a request: the first one asks a writing loop to stop after its batch, a second aborts."""

from __future__ import annotations

import signal
import sys
import threading

from tqdm.auto import tqdm


def catch_sigint():
    """Install the handler -> (stop, restore): stop["requested"] turns True at the first Ctrl-C; call restore() after."""
    stop = {"requested": False}

    def on_sigint(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        tqdm.write("stopping after this batch and saving (Ctrl-C again to abort now, losing the open shard)",
                   file=sys.stderr)

    old_handler = None
    if threading.current_thread() is threading.main_thread():  # signals can only be set there
        old_handler = signal.signal(signal.SIGINT, on_sigint)

    def restore() -> None:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)

    return stop, restore
