"""``python run.py {train,sweep,sample,eval,info,plot,bench} --help``: a thin entry into ``jaxbigram.cli``."""

if __name__ == "__main__":
    from jaxbigram import signals  # standard library only: a Ctrl-C during the imports below is one line

    signals.install(signals.stop_before_start)
    from jaxbigram.cli import console_main

    console_main("python run.py")
