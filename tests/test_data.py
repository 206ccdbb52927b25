"""data.py: tokenizer, corpus encoding and caching, split, get_batch, bigram counts — against naive references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbigram import data
from jaxbigram.data import Tokenizer, UnknownCharacters
from reference import np_bigram_counts

MIXED = "Hello, wörld!\nÇa va? 日本語 ✓ 😀 — naïve café\r\n\tend"


def naive_encode(text):
    """The lecture's tokenizer: sorted unique characters, a dict lookup per character."""
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    return "".join(chars), [stoi[c] for c in text]


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_vocab_is_sorted_unique_characters():
    tok = Tokenizer.from_text(MIXED)
    assert tok.chars == "".join(sorted(set(MIXED)))
    assert tok.vocab_size == len(set(MIXED))


def test_tokenizer_round_trip_non_ascii():
    tok = Tokenizer.from_text(MIXED)
    ids = tok.encode(MIXED)
    assert tok.decode(ids) == MIXED
    assert tok.decode(ids[3:10]) == MIXED[3:10]
    assert tok.decode([]) == ""


def test_encode_equals_naive_python_encode():
    tok = Tokenizer.from_text(MIXED)
    _, expected = naive_encode(MIXED)
    np.testing.assert_array_equal(tok.encode(MIXED), expected)


def test_unknown_characters_are_listed():
    tok = Tokenizer.from_text("abc \n")
    with pytest.raises(UnknownCharacters) as info:
        tok.encode("a b€zzc é\n")
    assert info.value.chars == sorted(set("€zé"))
    for c in "€zé":
        assert repr(c) in str(info.value)


def test_unknown_character_beyond_the_last_vocab_entry():
    # a code point larger than every vocab entry (the searchsorted clip at the end)
    tok = Tokenizer.from_text("ab")
    with pytest.raises(UnknownCharacters) as info:
        tok.encode("ab😀")
    assert info.value.chars == ["😀"]


def test_tokenizer_json_round_trip():
    tok = Tokenizer.from_text(MIXED)
    again = Tokenizer.from_json(tok.to_json())
    assert again == tok
    assert again.decode(again.encode(MIXED)) == MIXED


@pytest.mark.parametrize("alphabet_size", [7, 300])  # uint8 ids, then uint16 ids
def test_encode_corpus_equals_naive_encode(alphabet_size):
    rng = np.random.default_rng(0)
    alphabet = [chr(c) for c in rng.choice(np.arange(0x20, 0x3000), alphabet_size, replace=False)]
    text = "".join(rng.choice(alphabet, 5000))
    chars, expected = naive_encode(text)
    tok, ids = data.encode_corpus(text)
    assert tok.chars == chars
    np.testing.assert_array_equal(ids, expected)
    assert ids.dtype == (np.uint8 if len(chars) <= 256 else np.uint16)
    np.testing.assert_array_equal(tok.encode(text), expected)
    assert tok.decode(ids) == text


# ----------------------------------------------------------------------------- split

@pytest.mark.parametrize("n", [1000, 1003, 11])
def test_split_first_90_percent_train_rest_val(n):
    ids = np.arange(n)
    train, val = data.split(ids, 0.1)
    cut = int(0.9 * n)  # the lecture's n = int(0.9 * len(data))
    np.testing.assert_array_equal(train, ids[:cut])
    np.testing.assert_array_equal(val, ids[cut:])


def test_split_on_tinyshakespeare(corpus):
    train, val = data.split(corpus.ids, 0.1)
    assert len(train) == int(0.9 * len(corpus.ids)) == 1003854
    assert len(val) == len(corpus.ids) - len(train)


# ----------------------------------------------------------------------------- get_batch

def test_get_batch_shapes_dtype_and_shift():
    arr = jnp.asarray(np.arange(1000) % 251, dtype=jnp.uint8)
    x, y = data.get_batch(jax.random.key(0), arr, 4, 8)
    assert x.shape == y.shape == (4, 8)
    assert x.dtype == y.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(y[:, :-1]), np.asarray(x[:, 1:]))


def test_get_batch_rows_are_contiguous_windows_of_the_data():
    base = np.arange(500)
    x, y = data.get_batch(jax.random.key(3), jnp.asarray(base), 16, 8)
    x, y = np.asarray(x), np.asarray(y)
    starts = x[:, 0]
    np.testing.assert_array_equal(x, base[starts[:, None] + np.arange(8)])
    np.testing.assert_array_equal(y, base[starts[:, None] + np.arange(1, 9)])


def test_get_batch_same_key_same_batch():
    arr = jnp.asarray(np.random.default_rng(0).integers(0, 65, 10000), dtype=jnp.int32)
    x1, y1 = data.get_batch(jax.random.key(7), arr, 32, 8)
    x2, y2 = jax.jit(data.get_batch, static_argnums=(2, 3))(jax.random.key(7), arr, 32, 8)
    np.testing.assert_array_equal(np.asarray(x1), np.asarray(x2))
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    x3, _ = data.get_batch(jax.random.key(8), arr, 32, 8)
    assert not np.array_equal(np.asarray(x1), np.asarray(x3))


def test_get_batch_no_window_past_the_end_and_every_start_reachable():
    n, block = 12, 8
    arr = jnp.arange(n, dtype=jnp.int32)
    keys = jax.random.split(jax.random.key(0), 500)
    xs, ys = jax.vmap(lambda k: data.get_batch(k, arr, 4, block))(keys)
    xs, ys = np.asarray(xs), np.asarray(ys)
    assert xs.min() >= 0 and ys.max() <= n - 1  # y's last id is at most the data's last element
    starts = set(xs[..., 0].ravel().tolist())
    assert starts == set(range(n - block))  # every valid window, including the one ending at the last id


# ----------------------------------------------------------------------------- bigram counts

@pytest.mark.parametrize("vocab, n, chunk", [
    (7, 1000, 1 << 22),  # one chunk, dense bincount
    (7, 1000, 1),  # one pair per chunk (np.unique path, 49 > 4)
    (7, 1000, 2),
    (7, 1000, 998),  # the last chunk holds one pair
    (7, 1000, 999),  # exactly the number of pairs
    (7, 1000, 1000),
    (7, 1000, 333),  # chunks end mid-stream; the boundary pair must be counted once
    (300, 5000, 64),  # big vocab: np.unique path across chunks
    (300, 5000, 1 << 22),
])
def test_bigram_counts_equal_naive_numpy_count(vocab, n, chunk):
    ids = np.random.default_rng(vocab + n + chunk).integers(0, vocab, n).astype(data.ids_dtype(vocab))
    counts = data.bigram_counts(ids, vocab, chunk=chunk)
    expected = np_bigram_counts(ids, vocab)
    np.testing.assert_array_equal(counts.dense(), expected)
    assert counts.total == n - 1
    assert (counts.counts > 0).all()
    codes = counts.rows.astype(np.int64) * vocab + counts.cols
    assert (np.diff(codes) > 0).all()  # sorted by row * V + col, each pair once


@pytest.mark.parametrize("ids", [[], [3]])
def test_bigram_counts_of_no_pairs(ids):
    counts = data.bigram_counts(np.asarray(ids, dtype=np.uint8), 5)
    assert counts.total == 0
    np.testing.assert_array_equal(counts.dense(), np.zeros((5, 5)))


def test_bigram_counts_on_tinyshakespeare(corpus):
    vocab = corpus.tokenizer.vocab_size
    np.testing.assert_array_equal(data.bigram_counts(corpus.ids, vocab, chunk=100_003).dense(),
                                  np_bigram_counts(corpus.ids, vocab))


# ----------------------------------------------------------------------------- corpus loading and the cache

def test_load_corpus_caches_ids_and_the_second_load_is_memory_mapped(tmp_path):
    text = MIXED * 50
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    first = data.load_corpus(path)
    _, expected = naive_encode(text)
    np.testing.assert_array_equal(first.ids, expected)
    assert not isinstance(first.ids, np.memmap)
    assert list(tmp_path.glob("corpus.txt.jaxbigram-*.ids.npy"))  # cached beside the source

    second = data.load_corpus(path)
    assert isinstance(second.ids, np.memmap)
    np.testing.assert_array_equal(second.ids, first.ids)
    assert second.tokenizer == first.tokenizer
    assert second.sha256 == first.sha256


def test_read_only_data_folder_is_never_written_and_the_user_cache_serves(tmp_path, monkeypatch):
    """A shared, read-only dataset folder stays untouched (even for root); the ids go to $XDG_CACHE_HOME."""
    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "corpus.txt"
    path.write_text("read only\n" * 30, encoding="utf-8")
    folder.chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:
        first = data.load_corpus(path)
        second = data.load_corpus(path)
        assert sorted(p.name for p in folder.iterdir()) == ["corpus.txt"]
    finally:
        folder.chmod(0o755)
    cached = list((tmp_path / "cache" / "jaxbigram" / "ids").glob(f"{first.sha256}.ids.npy"))
    assert cached and cached[0].stat().st_mode & 0o044  # readable by others, not mkstemp's 0600
    assert isinstance(second.ids, np.memmap)
    np.testing.assert_array_equal(second.ids, naive_encode("read only\n" * 30)[1])


def test_changed_file_invalidates_the_cache(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abcabc\n" * 20, encoding="utf-8")
    before = data.load_corpus(path)
    data.load_corpus(path)  # now cached
    changed = "xyz zyx\n" * 20
    path.write_text(changed, encoding="utf-8")
    after = data.load_corpus(path)
    assert after.sha256 != before.sha256
    chars, expected = naive_encode(changed)
    assert after.tokenizer.chars == chars
    np.testing.assert_array_equal(after.ids, expected)


def test_load_corpus_sha256_matches_hashlib(data_path, corpus):
    import hashlib

    assert corpus.sha256 == hashlib.sha256(data_path.read_bytes()).hexdigest() == data.TINYSHAKESPEARE_SHA256
    assert corpus.tokenizer.vocab_size == 65
    assert corpus.tokenizer.chars[0] == "\n"  # the lecture's default context, id 0
