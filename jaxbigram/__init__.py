"""jaxbigram: the character-level language models of "let's build GPT" (the bigram and its GPT), in functional JAX/Flax.

``import jaxbigram as jb`` is cheap: the submodules (``jb.config``, ``jb.data``, ``jb.models``, ``jb.train``,
``jb.evaluate``, ``jb.sampling``, …) are imported on first use (PEP 562), so the command line only loads what a
command needs. What a notebook or a script may rely on is listed in docs/api.md.
"""

import importlib

__version__ = "0.1.0"

SUBMODULES = ("bench", "checkpoint", "cli", "compute", "config", "data", "errors", "evaluate", "files", "flags",
              "lecture", "loop", "memory", "metadata", "models", "optimizer", "optimum", "parallel", "paths", "plot",
              "progress", "runtime", "runs", "sampling", "signals", "sweep", "sweep_export", "sweep_members",
              "sweep_report", "sweep_shapes", "tensorboard", "train")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *SUBMODULES])
