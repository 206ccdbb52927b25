"""Text in, integer ids out: where the corpus comes from, the character tokenizer, the split, and get_batch."""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .errors import DownloadError, UsageError

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DATA_ENV = "JAXBIGRAM_DATA"
DATA_URL_ENV = "JAXBIGRAM_DATA_URL"  # where tinyshakespeare is downloaded from (default TINYSHAKESPEARE_URL)
_MAX_CODEPOINT = 0x110000
_CACHE_FORMAT = 1


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
        """Ids → string (vectorised)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        return _chars(self._sorted_codepoints[ids])



def _id_lookup(present: np.ndarray) -> np.ndarray:
    """code point → id table for the sorted code points ``present`` (the vocabulary)."""
    dtype = ids_dtype(len(present))
    lookup = np.zeros(_MAX_CODEPOINT, dtype=dtype)
    lookup[present] = np.arange(len(present), dtype=dtype)
    return lookup


ENCODE_CHUNK_BYTES = 1 << 22  # 4 MB: 8 MB is ~6% faster but holds ~85 MB more in temporaries


def _utf8_codepoints(payload: bytes, path, chunk: int):
    """Yield the code points (uint32 arrays) of consecutive pieces of UTF-8 ``payload``, decoding ``chunk`` bytes at a
    time; invalid UTF-8 raises ``data_not_utf8`` with the offending byte's offset in the whole payload."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(payload)
    for start in range(0, len(payload), chunk):
        pending = len(decoder.getstate()[0])  # bytes of a character split across the previous boundary
        try:
            text = decoder.decode(view[start:start + chunk], final=start + chunk >= len(payload))
        except UnicodeDecodeError as e:
            raise UsageError("data_not_utf8", path=path, offset=start - pending + e.start) from None
        yield _codepoints(text)


def encode_utf8(payload: bytes, path="<bytes>", chunk: int = ENCODE_CHUNK_BYTES) -> tuple[Tokenizer, np.ndarray]:
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
    for cps in _utf8_codepoints(payload, path, chunk):
        seen[cps] = True
        length += len(cps)
    present = np.flatnonzero(seen)
    lookup = _id_lookup(present)
    ids = np.empty(length, dtype=lookup.dtype)
    at = 0
    for cps in _utf8_codepoints(payload, path, chunk):
        ids[at:at + len(cps)] = lookup[cps]
        at += len(cps)
    return Tokenizer(_chars(present)), ids


# ----------------------------------------------------------------------------- where the text comes from

def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jaxbigram`` (default ``~/.cache/jaxbigram``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxbigram"


def _atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a cache beside a shared text should be readable by all
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_tinyshakespeare(dest: Path, url: str = TINYSHAKESPEARE_URL, timeout: float = 30.0) -> Path:
    """Fetch tinyshakespeare into ``dest``, verifying its sha256."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except Exception as e:  # offline, DNS, HTTP errors: all mean "could not download"
        raise DownloadError("download_failed", url=url, reason=str(e) or type(e).__name__) from None
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
    """
    if flag:
        return Path(flag).expanduser(), "--data"
    if recorded and Path(recorded).is_file():
        return Path(recorded), "checkpoint"
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"
    if config_path:
        return Path(config_path).expanduser(), "config"
    cached = cache_dir() / "tinyshakespeare" / "input.txt"
    if cached.is_file() and hashlib.sha256(cached.read_bytes()).hexdigest() == TINYSHAKESPEARE_SHA256:
        return cached, "cache"
    return download_tinyshakespeare(cached, os.environ.get(DATA_URL_ENV) or TINYSHAKESPEARE_URL), "download"


def read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise UsageError("data_missing", path=path)
    if path.is_dir():
        raise UsageError("data_is_dir", path=path)
    try:
        payload = path.read_bytes()
    except OSError as e:
        raise UsageError("data_unreadable", path=path, reason=e.strerror or str(e)) from None
    if not payload:
        raise UsageError("data_empty", path=path)
    return payload


def read_prompt_file(path: str | Path) -> str:
    """The whole UTF-8 text of a prompt file, as is; a clear error if it cannot be read."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise UsageError("prompt_file", path=path, reason=e.strerror or type(e).__name__) from None
    except UnicodeDecodeError as e:
        raise UsageError("prompt_file", path=path, reason=f"not UTF-8: invalid byte at offset {e.start}") from None


def decode_utf8(payload: bytes, path: Path) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError("data_not_utf8", path=path, offset=e.start) from None


# ----------------------------------------------------------------------------- the corpus, cached as .npy

@dataclass(frozen=True)
class Corpus:
    """The encoded text: ``ids`` (numpy, possibly memory-mapped), its tokenizer and provenance."""

    ids: np.ndarray
    tokenizer: Tokenizer
    path: str
    sha256: str


def _writable_dir(folder: Path) -> bool:
    """Whether we may add files to ``folder``: its mode must allow writing (respected even by root, who bypasses
    permission checks, so a read-only data folder such as a shared dataset is never written to) and access allows it."""
    try:
        return bool(folder.stat().st_mode & 0o222) and os.access(folder, os.W_OK | os.X_OK)
    except OSError:
        return False


def _cache_paths(source: Path, sha256: str) -> list[tuple[Path, Path]]:
    """Candidate (ids.npy, vocab.json) locations: beside the source, then the user cache.

    Beside the source is read from always, but written to only when its folder is writable (see _writable_dir).
    """
    stem = f"{source.name}.jaxbigram-{sha256[:16]}"
    beside = (source.parent / f"{stem}.ids.npy", source.parent / f"{stem}.vocab.json")
    cached = (cache_dir() / "ids" / f"{sha256}.ids.npy", cache_dir() / "ids" / f"{sha256}.vocab.json")
    return [beside, cached]


def _read_cache(ids_path: Path, vocab_path: Path) -> tuple[Tokenizer, np.ndarray] | None:
    try:
        meta = json.loads(vocab_path.read_text(encoding="utf-8"))
        if meta.get("format") != _CACHE_FORMAT:
            return None
        tokenizer = Tokenizer(meta["chars"])
        ids = np.load(ids_path, mmap_mode="r")
        if ids.dtype != ids_dtype(tokenizer.vocab_size) or ids.ndim != 1 or len(ids) != meta["length"]:
            return None
        return tokenizer, ids
    except (OSError, ValueError, KeyError):
        return None


def _write_cache(ids_path: Path, vocab_path: Path, tokenizer: Tokenizer, ids: np.ndarray) -> bool:
    try:
        _atomic_write(ids_path, lambda f: np.save(f, ids))
        meta = {"format": _CACHE_FORMAT, "chars": tokenizer.chars, "length": int(len(ids))}
        _atomic_write(vocab_path, lambda f: f.write(json.dumps(meta, ensure_ascii=False).encode("utf-8")))
        return True
    except OSError:
        return False


def load_corpus(path: str | Path, use_cache: bool = True) -> Corpus:
    """Read and encode a UTF-8 text file; encoded ids are cached keyed by the text's sha256."""
    path = Path(path)
    payload = read_bytes(path)
    sha256 = hashlib.sha256(payload).hexdigest()
    candidates = _cache_paths(path, sha256) if use_cache else []
    for ids_path, vocab_path in candidates:
        hit = _read_cache(ids_path, vocab_path)
        if hit is not None:
            return Corpus(ids=hit[1], tokenizer=hit[0], path=str(path), sha256=sha256)
    tokenizer, ids = encode_utf8(payload, path)
    for ids_path, vocab_path in candidates:
        if _writable_dir(ids_path.parent) or not ids_path.parent.exists():
            if _write_cache(ids_path, vocab_path, tokenizer, ids):
                break
    return Corpus(ids=ids, tokenizer=tokenizer, path=str(path), sha256=sha256)


def split(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - val_fraction) of the ids for training, the rest for validation (the lecture's 90/10)."""
    n = int((1.0 - val_fraction) * len(ids))
    return ids[:n], ids[n:]


def check_sizes(corpus: Corpus, train_ids, val_ids, block_size: int) -> None:
    """Refuse corpora too short for ``block_size`` windows, with a message saying what to change."""
    need = block_size + 2
    if len(corpus.ids) < need:
        raise UsageError("data_too_short", path=corpus.path, n=len(corpus.ids), need=need)
    if len(train_ids) < need:
        raise UsageError("train_too_short", n=len(train_ids), need=need)
    if len(val_ids) < need:
        raise UsageError("val_too_short", n=len(val_ids), need=need)


# ----------------------------------------------------------------------------- batches (pure)

def get_batch(key: jax.Array, data: jax.Array, batch_size: int, block_size: int) -> tuple[jax.Array, jax.Array]:
    """``batch_size`` random windows of ``block_size`` ids (x) and the same windows shifted by one (y), int32."""
    starts = jax.random.randint(key, (batch_size,), 0, data.shape[0] - block_size)
    offsets = starts[:, None] + jnp.arange(block_size)[None, :]
    return data[offsets].astype(jnp.int32), data[offsets + 1].astype(jnp.int32)
