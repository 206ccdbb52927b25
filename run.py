"""python run.py {train,sample,eval,info} --help"""

import sys

from jaxbigram.cli import main

if __name__ == "__main__":
    sys.exit(main())
