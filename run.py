"""``python run.py {train,sample,eval,info,plot,bench} --help``: a thin entry into ``jaxbigram.cli``."""

import os
import signal


def _stop_before_start(signum, frame):
    """Ctrl-C or SIGTERM before the program has started: nothing was done; one line, exit 128 + N."""
    os.write(2, f"stopped by {signal.Signals(signum).name}\n".encode())
    os._exit(128 + signum)


if __name__ == "__main__":
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _stop_before_start)
    from jaxbigram.cli import console_main

    console_main("python run.py")
