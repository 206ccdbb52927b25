"""``python -m jaxbigram.bench data-prep PATH``: the data-prep child of ``bench_data_prep`` (a fresh process).

``bench`` became a package, and ``python -m`` runs a package's ``__main__``, not its ``__init__``."""

import sys

from .speed import data_prep_child

if sys.argv[1:2] == ["data-prep"] and len(sys.argv) == 3:
    data_prep_child(sys.argv[2])
else:
    sys.exit("usage: python -m jaxbigram.bench data-prep PATH (a child of `run.py bench`)")
