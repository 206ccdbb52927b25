"""Text in, integer ids out: where the corpus comes from, the character tokenizer, the split, and get_batch."""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import checks
from .errors import DownloadError, UsageError
from .files import _atomic_write, _is_regular, _writable_dir, read_bytes, strip_bom
from .paths import check_path_encodable, check_user_path, user_cache_dir

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DATA_ENV = "JAXBIGRAM_DATA"
DATA_URL_ENV = "JAXBIGRAM_DATA_URL"  # where tinyshakespeare is downloaded from (default TINYSHAKESPEARE_URL)
_MAX_CODEPOINT = 0x110000
# 2: vocab.json also stores the source's sha256 and a sha256 of (chars, ids); a cache that does not match is rebuilt
_CACHE_FORMAT = 2
MAX_INDEX = 2**31 - 1  # JAX indexes arrays with int32 (jax_enable_x64 off): no corpus may hold more ids than this
DOWNLOAD_MAX_BYTES = 1 << 24  # tinyshakespeare is 1.1 MB; a server streaming forever is cut off here
_VOCAB_JSON_MAX_BYTES = 1 << 26  # the biggest possible vocabulary (every code point, JSON-escaped) is ~ 13 MB


# ----------------------------------------------------------------------------- tokenizer

class UnknownCharacters(ValueError):
    """Raised by Tokenizer.encode; ``chars`` lists the characters outside the vocabulary."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        super().__init__("characters outside the vocabulary: " + ", ".join(repr(c) for c in chars))


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _chars(codepoints) -> str:
    """The inverse of ``_codepoints``: an integer array of code points → str (vectorised)."""
    return np.asarray(codepoints).astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


def ids_dtype(vocab_size: int):
    """The smallest unsigned integer type that holds every id."""
    return np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32


@dataclass(frozen=True)
class Tokenizer:
    """Character-level tokenizer: id i is the i-th character of the sorted vocabulary."""

    chars: str

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def _sorted_codepoints(self) -> np.ndarray:
        return _codepoints(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """String → ids (vectorised). Raises UnknownCharacters listing any character not in the vocabulary."""
        cps = _codepoints(text)
        vocab = self._sorted_codepoints
        pos = np.minimum(np.searchsorted(vocab, cps), len(vocab) - 1)
        unknown = vocab[pos] != cps
        if unknown.any():
            raise UnknownCharacters(list(_chars(np.unique(cps[unknown]))))
        return pos.astype(ids_dtype(self.vocab_size))

    def encode_prompt(self, text: str) -> np.ndarray:
        """A user's prompt → ids, with a one-line error for an empty prompt or characters the model never saw."""
        if text == "":
            raise UsageError("prompt_empty")
        try:
            return self.encode(text)
        except UnknownCharacters as e:
            raise UsageError("prompt_unknown", chars=", ".join(repr(c) for c in e.chars)) from None

    def decode(self, ids) -> str:
        """Ids (any shape, each from 0 to ``vocab_size - 1``) → string (vectorised)."""
        ids = checks.check_ids("decode", "ids", np.asarray(ids), self.vocab_size, ndim=None)
        ids = ids.astype(np.int64).reshape(-1)
        return _chars(self._sorted_codepoints[ids])



def _id_lookup(present: np.ndarray) -> np.ndarray:
    """code point → id table for the sorted code points ``present`` (the vocabulary)."""
    dtype = ids_dtype(len(present))
    lookup = np.zeros(_MAX_CODEPOINT, dtype=dtype)
    lookup[present] = np.arange(len(present), dtype=dtype)
    return lookup


ENCODE_CHUNK_BYTES = 1 << 22  # 4 MB: bigger chunks gain little and hold far more temporaries


def _utf8_codepoints(payload: bytes, path, chunk: int, offset: int = 0):
    """Yield the code points (uint32 arrays) of consecutive pieces of UTF-8 ``payload``, decoding ``chunk`` bytes at a
    time; invalid UTF-8 raises ``data_not_utf8`` with the offending byte's offset in the whole payload (plus
    ``offset``: where ``payload`` starts in the file, e.g. 3 after a byte-order mark)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(payload)
    for start in range(0, len(payload), chunk):
        pending = len(decoder.getstate()[0])  # bytes of a character split across the previous boundary
        try:
            text = decoder.decode(view[start:start + chunk], final=start + chunk >= len(payload))
        except UnicodeDecodeError as e:
            raise UsageError("data_not_utf8", path=path, offset=offset + start - pending + e.start) from None
        yield _codepoints(text)


def encode_utf8(payload: bytes, path="<bytes>", chunk: int = ENCODE_CHUNK_BYTES,
                offset: int = 0) -> tuple[Tokenizer, np.ndarray]:
    """UTF-8 bytes → (Tokenizer, ids), the vocabulary and ids of ``payload.decode()`` without ever holding the whole
    text as a ``str``: memory is the ids plus O(chunk). Pure ASCII (the common case) is mapped byte for byte with
    ``bytes.translate``; other text is decoded twice in chunks (pass 1 finds the vocabulary, pass 2 maps)."""
    raw = np.frombuffer(payload, dtype=np.uint8)
    if raw.size and int(raw.max()) < 0x80:  # ASCII: one byte per character
        seen = np.zeros(0x80, dtype=bool)
        for start in range(0, raw.size, chunk):
            seen[raw[start:start + chunk]] = True
        present = np.flatnonzero(seen)
        table = np.zeros(256, dtype=np.uint8)
        table[present] = np.arange(len(present), dtype=np.uint8)
        ids = np.frombuffer(bytes(payload).translate(table.tobytes()), dtype=np.uint8)
        return Tokenizer(_chars(present)), ids
    seen = np.zeros(_MAX_CODEPOINT, dtype=bool)
    length = 0
    for cps in _utf8_codepoints(payload, path, chunk, offset):
        seen[cps] = True
        length += len(cps)
    present = np.flatnonzero(seen)
    lookup = _id_lookup(present)
    ids = np.empty(length, dtype=lookup.dtype)
    at = 0
    for cps in _utf8_codepoints(payload, path, chunk, offset):
        ids[at:at + len(cps)] = lookup[cps]
        at += len(cps)
    return Tokenizer(_chars(present)), ids


# ----------------------------------------------------------------------------- where the text comes from

def cache_dir() -> Path | None:
    """``$XDG_CACHE_HOME/jaxbigram`` (default ``~/.cache/jaxbigram``); None when there is no user cache."""
    base = user_cache_dir()
    return None if base is None else base / "jaxbigram"


def download_tinyshakespeare(dest: Path, url: str = TINYSHAKESPEARE_URL, timeout: float = 30.0) -> Path:
    """Fetch tinyshakespeare into ``dest``, verifying its sha256."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read(DOWNLOAD_MAX_BYTES + 1)
    except Exception as e:  # offline, DNS, HTTP errors: all mean "could not download"
        raise DownloadError("download_failed", url=url, reason=str(e) or type(e).__name__) from None
    if len(payload) > DOWNLOAD_MAX_BYTES:
        raise DownloadError("download_failed", url=url, reason=f"the server sent more than {DOWNLOAD_MAX_BYTES} bytes")
    digest = hashlib.sha256(payload).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise DownloadError("download_checksum", got=digest, want=TINYSHAKESPEARE_SHA256)
    _atomic_write(dest, lambda f: f.write(payload))
    return dest


def resolve_data_path(flag: str | None = None, *, recorded: str | None = None, config_path: str = "") -> tuple[Path, str]:
    """The text to read, and where that choice came from (``--data``, ``checkpoint``, ``$JAXBIGRAM_DATA``, ``config``,
    ``cache``). The one place that decides; first match wins:

    1. ``flag`` (``--data``);
    2. ``recorded``: the text a checkpoint was trained on, when that file still exists (resume, eval);
    3. ``$JAXBIGRAM_DATA``; 4. the config's ``data.path``;
    5. tinyshakespeare in the user cache, downloaded (sha256-checked) on first use.

    A path given by the user (1, 3, 4) is checked first (``paths.check_user_path``), naming where it came from.
    """
    if not flag and recorded and _is_regular(Path(recorded)):
        return Path(recorded), "checkpoint"
    for given, source, origin in ((flag, "--data", "--data"), (os.environ.get(DATA_ENV), f"${DATA_ENV}", DATA_ENV),
                                  (config_path, "config", "data.path")):
        if given:
            path = Path(given).expanduser()
            check_user_path(path, origin, "data")
            return path, source
    if cache_dir() is None:
        raise UsageError("data_no_cache")
    cached = cache_dir() / "tinyshakespeare" / "input.txt"
    if _is_regular(cached) and hashlib.sha256(cached.read_bytes()).hexdigest() == TINYSHAKESPEARE_SHA256:
        return cached, "cache"
    return download_tinyshakespeare(cached, os.environ.get(DATA_URL_ENV) or TINYSHAKESPEARE_URL), "download"


# ----------------------------------------------------------------------------- reading files safely

@dataclass(frozen=True)
class Corpus:
    """The encoded text: ``ids`` (numpy, possibly memory-mapped), its tokenizer and provenance.

    ``sha256`` is the sha256 of the file's bytes as they are on disk (a byte-order mark included); ``bom_stripped``
    says a leading UTF-8 byte-order mark was removed before encoding (so the caller can tell the user).
    """

    ids: np.ndarray
    tokenizer: Tokenizer
    path: str
    sha256: str
    bom_stripped: bool = False


def _cache_paths(source: Path, sha256: str) -> list[tuple[Path, Path]]:
    """Candidate (ids.npy, vocab.json) locations: beside the source, then the user cache.

    Beside the source is read from always, but written to only when its folder is writable (see _writable_dir).
    """
    stem = f"{source.name}.jaxbigram-{sha256[:16]}"
    beside = (source.parent / f"{stem}.ids.npy", source.parent / f"{stem}.vocab.json")
    if cache_dir() is None:
        return [beside]
    cached = (cache_dir() / "ids" / f"{sha256}.ids.npy", cache_dir() / "ids" / f"{sha256}.vocab.json")
    return [beside, cached]


def _cache_checksum(chars: str, ids: np.ndarray) -> str:
    """sha256 of the vocabulary and the ids' bytes, verified on every cache hit (a small part of a cached load)."""
    digest = hashlib.sha256(chars.encode("utf-8", "surrogatepass"))
    digest.update(b"\0")
    step = 1 << 24  # in slices: a memory map is read piece by piece, never copied whole
    flat = ids.reshape(-1)
    for start in range(0, len(flat), step):
        digest.update(np.ascontiguousarray(flat[start:start + step]).view(np.uint8))
    return "sha256:" + digest.hexdigest()


def _read_cache(ids_path: Path, vocab_path: Path, sha256: str) -> tuple[Tokenizer, np.ndarray] | None:
    """The cached (tokenizer, ids) of the text whose sha256 is ``sha256``, or None when the cache is missing, of
    another format, made for another text, or does not match its checksum (truncated, corrupted, tampered with)."""
    try:
        if not (_is_regular(ids_path) and _is_regular(vocab_path)):  # never open a FIFO or a device
            return None
        if os.stat(vocab_path).st_size > _VOCAB_JSON_MAX_BYTES:
            return None
        meta = json.loads(vocab_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != _CACHE_FORMAT or meta.get("sha256") != sha256:
            return None
        chars, length = meta["chars"], meta["length"]
        if not isinstance(chars, str) or not chars or type(length) is not int:
            return None
        cps = _codepoints(chars)
        if (np.diff(cps.astype(np.int64)) <= 0).any():  # a vocabulary is sorted and unique
            return None
        tokenizer = Tokenizer(chars)
        ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
        if ids.dtype != ids_dtype(tokenizer.vocab_size) or ids.ndim != 1 or len(ids) != length:
            return None
        if meta.get("checksum") != _cache_checksum(chars, ids):
            return None
        return tokenizer, ids
    except (OSError, ValueError, KeyError, TypeError, UnicodeError):
        return None


def _write_cache(ids_path: Path, vocab_path: Path, tokenizer: Tokenizer, ids: np.ndarray, sha256: str) -> bool:
    try:
        _atomic_write(ids_path, lambda f: np.save(f, ids))
        meta = {"format": _CACHE_FORMAT, "sha256": sha256, "chars": tokenizer.chars, "length": int(len(ids)),
                "checksum": _cache_checksum(tokenizer.chars, ids)}
        _atomic_write(vocab_path, lambda f: f.write(json.dumps(meta, ensure_ascii=False).encode("utf-8")))
        return True
    except (OSError, ValueError):
        return False


def load_corpus(path: str | Path, use_cache: bool = True) -> Corpus:
    """Read and encode a UTF-8 text file; encoded ids are cached keyed by the text's sha256.

    The path must be UTF-8 (see check_path_encodable: it is stored in checkpoints) and name a regular file (see
    read_bytes). A leading byte-order mark is not part of the text (``Corpus.bom_stripped`` says one was removed).
    A cache hit is verified against the text's sha256 and a checksum of the ids; a cache that does not match is
    ignored, and the ids are encoded again and the cache rewritten where its folder is writable.
    """
    path = Path(checks.check_type("load_corpus", "path", path, (str, os.PathLike), "a path (str or Path)"))
    check_path_encodable(path, "--data PATH", "data file")
    payload = read_bytes(path)
    sha256 = hashlib.sha256(payload).hexdigest()
    body, bom = strip_bom(payload)
    if not body:
        raise UsageError("data_empty", path=path)
    candidates = _cache_paths(path, sha256) if use_cache else []
    for ids_path, vocab_path in candidates:
        hit = _read_cache(ids_path, vocab_path, sha256)
        if hit is not None:
            return Corpus(ids=hit[1], tokenizer=hit[0], path=str(path), sha256=sha256, bom_stripped=bom)
    tokenizer, ids = encode_utf8(body, path, offset=3 * bom)
    for ids_path, vocab_path in candidates:
        if _writable_dir(ids_path.parent) or not os.path.exists(ids_path.parent):
            if _write_cache(ids_path, vocab_path, tokenizer, ids, sha256):
                break
    return Corpus(ids=ids, tokenizer=tokenizer, path=str(path), sha256=sha256, bom_stripped=bom)


def split(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - val_fraction) of the ids for training, the rest for validation (the lecture's 90/10);
    ``val_fraction`` is strictly between 0 and 1."""
    checks.check_ids("split", "ids", ids, values=False)
    checks.check_real("split", "val_fraction", val_fraction, 0.0, 1.0, low_open=True, high_open=True)
    n = int((1.0 - val_fraction) * len(ids))
    return ids[:n], ids[n:]


def check_sizes(corpus: Corpus, train_ids, val_ids, block_size: int) -> None:
    """Refuse corpora too short for ``block_size`` windows, with a message saying what to change."""
    need = block_size + 2
    if len(corpus.ids) > MAX_INDEX:
        raise UsageError("data_too_long", path=corpus.path, n=len(corpus.ids), limit=MAX_INDEX)
    if len(corpus.ids) < need:
        raise UsageError("data_too_short", path=corpus.path, n=len(corpus.ids), need=need)
    if len(train_ids) < need:
        raise UsageError("train_too_short", n=len(train_ids), need=need)
    if len(val_ids) < need:
        raise UsageError("val_too_short", n=len(val_ids), need=need)


def min_text_length(block_size: int, val_fraction: float) -> int:
    """The fewest characters a text needs to pass ``check_sizes``: both splits hold ``block_size + 2`` ids (each
    split's length never decreases as the text grows, so a binary search finds it)."""
    need = block_size + 2

    def fits(n: int) -> bool:
        train = int((1.0 - val_fraction) * n)  # split's own arithmetic
        return min(train, n - train) >= need

    low, high = need, 2 * need
    while not fits(high):
        low, high = high, 2 * high
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid + 1, high)
    return low


def check_length_for(corpus: Corpus, command: str, uses: dict[str, tuple[int, float]]) -> None:
    """Refuse, in one line and before any work, a text too short for one of ``command``'s ``uses`` (what → its
    ``(block_size, val_fraction)``), naming the length it needs: as ``train`` would refuse it (``check_sizes``)."""
    needs = {what: min_text_length(*use) for what, use in uses.items()}
    largest = max(needs, key=needs.get)
    if len(corpus.ids) < needs[largest]:
        raise UsageError("text_too_short_for", command=command, need=needs[largest], what=largest,
                         block=uses[largest][0], path=corpus.path, n=len(corpus.ids))


# ----------------------------------------------------------------------------- batches (pure)

def get_batch(key: jax.Array, data: jax.Array, batch_size: int, block_size: int) -> tuple[jax.Array, jax.Array]:
    """``batch_size`` random windows of ``block_size`` ids (x) and the same windows shifted by one (y), int32.

    Checks what is static (free under ``jit``): one PRNG key, 1-D integer ``data`` of at least ``block_size + 1``
    ids, ``batch_size`` and ``block_size`` integers >= 1."""
    checks.check_key("get_batch", "key", key)
    batch_size = checks.check_int("get_batch", "batch_size", batch_size, 1)
    block_size = checks.check_int("get_batch", "block_size", block_size, 1)
    data = checks.check_ids("get_batch", "data", data, values=False)
    if data.shape[0] < block_size + 1:
        checks.refuse("get_batch", "data", f"at least block_size + 1 = {block_size + 1} ids long",
                      f"{data.shape[0]} ids")
    starts = jax.random.randint(key, (batch_size,), 0, data.shape[0] - block_size)
    offsets = starts[:, None] + jnp.arange(block_size)[None, :]
    return data[offsets].astype(jnp.int32), data[offsets + 1].astype(jnp.int32)
