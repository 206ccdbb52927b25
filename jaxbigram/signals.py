"""SIGINT and SIGTERM, in one place: what Ctrl-C does before the program starts, while a command runs, inside the
training loop, and while the interpreter shuts down. Standard library only (``run.py`` imports it before JAX).

- ``stop_before_start``: ``run.py``'s handler while the imports run: nothing was done; one line, exit 128 + N.
- ``exiting_on_signal(detail)``: everywhere but the training loop: one line and exit 128 + N at once (``os._exit``:
  a signal can arrive while JAX runs a Python callback from C++, where an exception would be swallowed or abort).
  Outside the loop nothing is half-written that matters: checkpoints are saved only inside it, every other file is
  replaced atomically.
- ``StopRequest``: inside the training loop (``loop.run``): the first signal is recorded, the loop finishes its chunk,
  saves and stops; a second one during a save is noted and waited out (the save is never cut in half); a second one
  at any other moment (a long eval, say) stops at once, like ``exiting_on_signal``: the last complete checkpoint
  stays the latest.
- ``cleanup_on_signal(cleanup)`` / ``signals_held()``: a process that starts children (``bench``) kills and reaps
  them and removes its temporary folders before the stop goes on; signals wait while a child's pid is recorded.
- ``ignore_at_exit``: after the command's last line, a Ctrl-C during JAX's and orbax's exit hooks prints nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def write_stderr(text: str) -> None:
    """Write to stderr without Python's buffered streams (safe inside a signal handler: a handler may interrupt a
    print to the same stream, a "reentrant call" error)."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


def _exit_now(line: str, signum: int) -> None:
    try:
        sys.stdout.flush()
    except Exception:  # a flush the signal interrupted; the text so far is all there is
        pass
    write_stderr(line + "\n")
    os._exit(128 + signum)


def stop_before_start(signum, frame) -> None:
    """Ctrl-C or SIGTERM before the program has started: nothing was done; one line, exit 128 + N."""
    _exit_now(f"stopped by {signal_name(signum)}", signum)


def install(handler) -> dict:
    """Set ``handler`` for SIGINT and SIGTERM (where this is the main thread); returns the previous handlers."""
    previous = {}
    for signum in HANDLED:
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: signals stay as they are
            pass
    return previous


def restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@contextmanager
def exiting_on_signal(stopped_line):
    """While inside: SIGINT/SIGTERM print ``stopped_line(signal_name)`` (what the stop left behind, said truthfully)
    and exit 128 + N at once."""
    previous = install(lambda signum, frame: _exit_now(stopped_line(signal_name(signum)), signum))
    try:
        yield
    finally:
        restore(previous)


class StopRequest:
    """Records SIGINT/SIGTERM instead of raising, so that a chunk or a save is never cut in half (see the module
    docstring). ``signum`` is the first signal received (None: none); wrap saves in ``saving()``."""

    def __init__(self):
        self.signum: int | None = None
        self._saving = False
        self._previous = {}

    def __enter__(self):
        self._previous = install(self._handle)
        return self

    def _handle(self, signum, frame):
        name = signal_name(signum)
        if self.signum is None:
            self.signum = signum
            write_stderr(f"\nreceived {name}: finishing this chunk and saving a checkpoint… (again to stop at once "
                         f"without saving)\n")
        elif self._saving:  # a second Ctrl-C must not cut the save in half: it is noted, never raised
            write_stderr(f"\nreceived {name} again: still saving, please wait (kill -9 would also be safe: the last "
                         f"complete checkpoint is kept)\n")
        else:
            _exit_now(f"stopped by {name} (a second signal): nothing more was saved; the last complete checkpoint "
                      f"stays the latest", signum)

    @property
    def signal_name(self) -> str:
        return signal_name(self.signum)

    @contextmanager
    def saving(self):
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def __exit__(self, *exc):
        restore(self._previous)
        return False


@contextmanager
def cleanup_on_signal(cleanup: Callable[[], None]) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM first call ``cleanup()``, then whatever handled them before (the
    CLI's one-line stop, which exits at once; Python's ``KeyboardInterrupt``; the default action). Blocks nest: the
    innermost cleans up first. Outside the main thread (where Python runs no handlers) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    # a handler set outside Python (None) cannot be restored, and an ignored signal stays ignored
    previous = {signum: h for signum, h in previous.items() if h is not None and h is not signal.SIG_IGN}

    def handler(signum, frame):
        cleanup()
        before = previous[signum]
        if callable(before):
            before(signum, frame)
        else:  # SIG_DFL: end as the signal would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for signum in previous:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


@contextmanager
def signals_held() -> Iterator[set]:
    """SIGINT and SIGTERM wait until the block ends (they are delivered then), so that a child's pid or a folder's
    path is recorded before a handler can run and its cleanup knows what to remove. Yields the signal mask from
    before the block (the one a child should start with)."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def ignore_at_exit() -> None:
    """The command has printed its last line: signals are ignored while the interpreter shuts down."""
    for signum in HANDLED:
        signal.signal(signum, signal.SIG_IGN)
