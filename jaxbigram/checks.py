"""The library API's argument checks (docs/api.md, "What is checked"): one function per kind of argument, each raising
``ArgumentError`` (a ValueError) or ``ArgumentTypeError`` (a TypeError) with one line that names the function, the
argument, what it takes and what it got: ``get_batch: block_size must be an integer >= 1, got 0``.

Host-side functions check values. Inside a traced function (``jit``, ``vmap``, ``grad``) only what is static is checked
(Python ints, shapes, dtypes, a dict's keys), at trace time, so a compiled step pays nothing: the values of traced
arrays are the caller's preconditions, which each function's docstring states.

numpy and JAX are imported where a check needs them: ``config`` (its ``Range``) stays as light to import as the CLI.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .errors import ArgumentError, ArgumentTypeError


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


@dataclass(frozen=True)
class Range:
    """The values a number accepts (a config key's, ``config.RANGES``; a library argument's, ``check_int``): ``low``
    to ``high`` (None: unbounded; an ``open`` end is excluded)."""

    low: float | None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""  # said after the range in the error message

    def __contains__(self, value) -> bool:
        return ((self.low is None or (value > self.low if self.low_open else value >= self.low))
                and (self.high is None or (value < self.high if self.high_open else value <= self.high)))

    @property
    def text(self) -> str:
        """``between 1 and 64``, ``> 0 and < 1``, ``>= 0``: as the error message and docs/config.md say it."""
        if None not in (self.low, self.high) and not (self.low_open or self.high_open):
            return f"between {_number(self.low)} and {_number(self.high)}"
        bounds = [] if self.low is None else [f"{'>' if self.low_open else '>='} {_number(self.low)}"]
        bounds += [] if self.high is None else [f"{'<' if self.high_open else '<='} {_number(self.high)}"]
        return " and ".join(bounds)

    @property
    def rule(self) -> str:
        return f"{self.text} {self.why}".rstrip()


def shown(value) -> str:
    """``value`` as a message shows it: an array by its shape and dtype, anything else by a short ``repr``."""
    if getattr(value, "ndim", 0) and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def refuse(function: str, argument: str, expected: str, got: str, *, wrong_type: bool = False):
    """Raise the one-line error: ``<function>: <argument> must be <expected>, got <got>``."""
    cls = ArgumentTypeError if wrong_type else ArgumentError
    raise cls("api_argument", function=function, argument=argument, expected=expected, got=got)


def refuse_type(function: str, argument: str, expected: str, value):
    """Raise the ``ArgumentTypeError`` of ``value``, shown by its type (an array: its shape and dtype; a short value:
    its type and ``repr``, ``int 0``)."""
    text = shown(value)
    if not text.startswith("an array"):
        name = type(value).__name__
        text = f"{name} {text}" if len(text) <= 40 else f"an {name}" if name[0] in "aeiouAEIOU" else f"a {name}"
    refuse(function, argument, expected, text, wrong_type=True)


def is_traced(value) -> bool:
    """Whether ``value`` is a JAX tracer (inside ``jit``, ``vmap`` or ``grad``): its values cannot be looked at."""
    from jax.core import Tracer

    return isinstance(value, Tracer)


def check_type(function: str, argument: str, value, types, expected: str):
    """``value`` if it is an instance of ``types``, else ``ArgumentTypeError`` (``expected`` says what to pass)."""
    if not isinstance(value, types):
        refuse_type(function, argument, expected, value)
    return value


def _scalar(function: str, argument: str, value, kinds: tuple, expected: str):
    """A concrete number of ``kinds`` (Python, numpy, or a 0-d array of that dtype kind), or None when traced."""
    import numpy as np

    if isinstance(value, bool) or isinstance(value, np.bool_):
        refuse_type(function, argument, expected, value)
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        if getattr(value, "shape", ()) != () or np.dtype(dtype).kind not in kinds:
            refuse_type(function, argument, expected, value)
        return None if is_traced(value) else value.item()
    if not isinstance(value, numbers.Integral if kinds == "iu" else numbers.Real):
        refuse_type(function, argument, expected, value)
    return value


def check_int(function: str, argument: str, value, low: int | None = None, high: int | None = None):
    """A whole number from ``low`` to ``high`` (None: unbounded): a Python or numpy integer, or a 0-d integer array.
    Returned as an ``int``; a traced integer is returned as it is (its value is a precondition)."""
    expected = "an integer" + ("" if low is None and high is None else " " + Range(low, high).text)
    got = _scalar(function, argument, value, "iu", expected)
    if got is None:
        return value
    if got not in Range(low, high):
        refuse(function, argument, expected, shown(got))
    return int(got)


def check_real(function: str, argument: str, value, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False):
    """A finite number in the range (``low_open`` / ``high_open``: that end excluded); a traced one is returned as
    it is. Returned as given (never converted: the caller's numbers stay the caller's)."""
    bounds = Range(low, high, low_open=low_open, high_open=high_open)
    expected = "a finite number" + ("" if low is None and high is None else " " + bounds.text)
    got = _scalar(function, argument, value, "iuf", expected)
    if got is not None and not (math.isfinite(got) and got in bounds):
        refuse(function, argument, expected, shown(got))
    return value


def check_key(function: str, argument: str, key):
    """One PRNG key: ``jax.random.key(seed)`` (shape ``()``) or a raw ``jax.random.PRNGKey(seed)`` (uint32, shape
    ``(2,)``); traced or not (only its dtype and shape are looked at)."""
    import jax
    import numpy as np

    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype is not None and not typed and np.dtype(dtype) == np.uint32 and shape == (2,)
    if (typed and shape == ()) or raw:
        return key
    refuse_type(function, argument, "one PRNG key (jax.random.key(seed))", key)


def _ndarray_like(function: str, argument: str, ids):
    """``ids`` as something with a dtype and a shape (a list is converted; arrays, traced or not, are kept)."""
    import numpy as np

    if hasattr(ids, "dtype") and hasattr(ids, "shape"):
        return ids
    try:
        return np.asarray(ids)
    except (TypeError, ValueError):
        refuse_type(function, argument, "an array of integer ids", ids)


def check_ids(function: str, argument: str, ids, vocab_size: int | None = None, *, ndim: int | None = 1,
              min_length: int = 0, values: bool = True):
    """Integer ids: an integer array-like with ``ndim`` dimensions (None: any) and at least ``min_length`` entries
    along the first; with ``vocab_size``, when ``values`` and the ids are concrete (never under ``jit``), each id
    from 0 to ``vocab_size - 1``. Returns ``ids`` as given (a list: as a numpy array)."""
    import numpy as np

    arr = _ndarray_like(function, argument, ids)
    an_array = f"a {ndim}-D array" if ndim else "an array"
    if ndim is not None and arr.ndim != ndim:
        refuse(function, argument, f"{an_array} of integer ids", shown(arr) if arr.ndim else f"a scalar {arr!r}",
               wrong_type=arr.ndim == 0)
    if arr.size and np.dtype(arr.dtype).kind not in "iu":
        refuse_type(function, argument, f"{an_array} of integer ids", arr)
    length = arr.shape[0] if arr.ndim else 0
    if min_length and length < min_length:
        refuse(function, argument, f"{an_array} of at least {min_length} id{'s' * (min_length != 1)}",
               f"{length} id{'s' * (length != 1)}")
    if vocab_size is not None and values and arr.size and not is_traced(arr):
        host = np.asarray(arr)  # numpy's min and max: a jax op here would be staged under an enclosing jit
        low, high = int(host.min()), int(host.max())
        if low < 0 or high >= vocab_size:
            refuse(function, argument, f"integer ids from 0 to {vocab_size - 1} (the vocabulary has {vocab_size})",
                   f"the id {low if low < 0 else high}")
    return arr if not hasattr(ids, "dtype") else ids


def check_batch(function: str, x, y, vocab_size: int | None = None, block_size: int | None = None) -> None:
    """A batch ``(x, y)``: int ``(B, T)`` ids of one shape, ``T <= block_size`` where given (static: free at trace
    time); each id below ``vocab_size`` where given and the arrays are concrete (an eager call, never under ``jit``)."""
    for name, ids in (("x", x), ("y", y)):
        check_ids(function, name, ids, vocab_size, ndim=2)
    if tuple(x.shape) != tuple(y.shape):
        refuse(function, "y", f"of x's shape {tuple(x.shape)}", f"shape {tuple(y.shape)}")
    if block_size is not None and x.shape[1] > block_size:
        refuse(function, "x", f"at most block_size = {block_size} positions long", f"{x.shape[1]} positions")


def check_strings(function: str, argument: str, values) -> None:
    """A list or tuple of strings (one string is refused: it would be read character by character)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        refuse_type(function, argument, "a list of strings (e.g. [\"train.steps=5\"])", values)
    for value in values:
        if not isinstance(value, str):
            refuse_type(function, argument, "a list of strings", value)
