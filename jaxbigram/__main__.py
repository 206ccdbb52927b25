"""``python -m jaxbigram …``: the same as ``jaxbigram …`` and ``python run.py …``."""

from .cli import console_main

console_main("python -m jaxbigram")
