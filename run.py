"""``python run.py {train,sweep,sample,eval,info,plot,bench} --help``: a thin entry into ``jaxbigram.cli``."""

import signal

if __name__ == "__main__":
    # Held until the handler is set: a Ctrl-C during the imports below is then one line, never a traceback
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    from jaxbigram import signals

    signals.install(signals.stop_before_start)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    from jaxbigram.cli import console_main

    console_main("python run.py")
