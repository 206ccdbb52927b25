"""``python run.py {train,sample,eval,info,plot,bench} --help``: a thin entry into ``jaxbigram.cli``."""

import sys

if __name__ == "__main__":
    try:
        from jaxbigram.cli import console_main
    except KeyboardInterrupt:  # Ctrl-C before the program even started: nothing was done
        print("stopped by SIGINT", file=sys.stderr)
        sys.exit(130)
    console_main()
