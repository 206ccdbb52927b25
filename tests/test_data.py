"""data.py: the tokenizer, streamed UTF-8 encoding, the ids cache, where the text comes from, split and get_batch —
against naive references."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbigram import data, files
from jaxbigram.data import Tokenizer, UnknownCharacters
from jaxbigram.errors import UsageError
from reference import naive_encode

MIXED = "Hello, wörld!\nÇa va? 日本語 ✓ 😀 — naïve café\r\n\tend"


def tokenizer_of(text: str) -> Tokenizer:
    return Tokenizer(naive_encode(text)[0])


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_round_trip_non_ascii():
    tok = tokenizer_of(MIXED)
    assert tok.vocab_size == len(set(MIXED))
    ids = tok.encode(MIXED)
    assert tok.decode(ids) == MIXED
    assert tok.decode(ids[3:10]) == MIXED[3:10]
    assert tok.decode([]) == ""


def test_encode_equals_naive_python_encode():
    tok = tokenizer_of(MIXED)
    np.testing.assert_array_equal(tok.encode(MIXED), naive_encode(MIXED)[1])


def test_unknown_characters_are_listed():
    tok = tokenizer_of("abc \n")
    with pytest.raises(UnknownCharacters) as info:
        tok.encode("a b€zzc é\n")
    assert info.value.chars == sorted(set("€zé"))
    for c in "€zé":
        assert repr(c) in str(info.value)


def test_unknown_character_beyond_the_last_vocab_entry():
    # a code point larger than every vocab entry (the searchsorted clip at the end)
    with pytest.raises(UnknownCharacters) as info:
        tokenizer_of("ab").encode("ab😀")
    assert info.value.chars == ["😀"]


def test_encode_prompt_errors_are_usage_errors():
    tok = tokenizer_of("abc \n")
    np.testing.assert_array_equal(tok.encode_prompt("ab c"), [2, 3, 1, 4])
    with pytest.raises(UsageError) as info:
        tok.encode_prompt("")
    assert info.value.code == "prompt_empty"
    with pytest.raises(UsageError) as info:
        tok.encode_prompt("a€é")
    assert info.value.code == "prompt_unknown" and "'é', '€'" in str(info.value)


# ----------------------------------------------------------------------------- streamed UTF-8 encoding

@pytest.mark.parametrize("alphabet_size", [7, 300])  # uint8 ids, then uint16 ids
def test_encode_utf8_equals_naive_encode(alphabet_size):
    rng = np.random.default_rng(0)
    alphabet = [chr(c) for c in rng.choice(np.arange(0x20, 0x3000), alphabet_size, replace=False)]
    text = "".join(rng.choice(alphabet, 5000))
    chars, expected = naive_encode(text)
    tok, ids = data.encode_utf8(text.encode("utf-8"))
    assert tok.chars == chars
    np.testing.assert_array_equal(ids, expected)
    assert ids.dtype == (np.uint8 if len(chars) <= 256 else np.uint16)
    np.testing.assert_array_equal(tok.encode(text), expected)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("text", [MIXED, "plain ascii\nonly, 123!", "x"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, data.ENCODE_CHUNK_BYTES])
def test_streamed_utf8_encoding_equals_encoding_the_decoded_text(text, chunk):
    tok, got = data.encode_utf8(text.encode("utf-8"), chunk=chunk)
    chars, want = naive_encode(text)
    assert tok.chars == chars and got.dtype == data.ids_dtype(len(chars))
    np.testing.assert_array_equal(got, want)
    assert tok.decode(got) == text


@pytest.mark.parametrize("payload", [b"abc\xffdef", "héllo".encode() * 3 + b"\xe2\x82", b"x" * 9 + b"\xc3y",
                                     "é".encode() * 5 + b"\x80z"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1024])
def test_invalid_utf8_reports_the_same_offset_as_decoding_it_whole(payload, chunk):
    with pytest.raises(UnicodeDecodeError) as whole:
        payload.decode("utf-8")
    with pytest.raises(UsageError) as streamed:
        data.encode_utf8(payload, "f.txt", chunk=chunk)
    assert streamed.value.code == "data_not_utf8" and streamed.value.fields["offset"] == whole.value.start


def test_big_vocabulary_gets_uint16_ids():
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 2
    tok, ids = data.encode_utf8(text.encode("utf-8"), chunk=101)
    assert tok.vocab_size == 300 and ids.dtype == np.uint16 and tok.decode(ids) == text


# ----------------------------------------------------------------------------- a generated multilingual corpus

@pytest.fixture(scope="module")
def big_text(big_corpus_path):
    return big_corpus_path.read_bytes().decode("utf-8")  # bytes → str: no newline translation


def test_generated_corpus_mixes_scripts_and_newlines(big_text):
    chars = set(big_text)
    assert len(chars) > 1000
    assert "\r\n" in big_text and "\n" in big_text.replace("\r\n", "")  # both line ends
    assert any(0x1F300 <= ord(c) <= 0x1F64F for c in chars)  # emoji (4-byte UTF-8)
    assert any(0x4E00 <= ord(c) <= 0x9FFF for c in chars)  # CJK
    assert any(0xC0 <= ord(c) <= 0x17F for c in chars)  # accented Latin
    assert {len(c.encode("utf-8")) for c in chars} == {1, 2, 3, 4}


def test_big_corpus_round_trips_every_character(big_corpus_path, big_text):
    first = data.load_corpus(big_corpus_path)
    assert first.tokenizer.chars == "".join(sorted(set(big_text)))
    assert first.ids.dtype == np.uint16 and len(first.ids) == len(big_text)
    assert first.tokenizer.decode(first.ids) == big_text
    every = first.tokenizer.chars
    np.testing.assert_array_equal(first.tokenizer.encode(every), np.arange(len(every)))
    cached = data.load_corpus(big_corpus_path)  # second load: the memory-mapped cache
    assert isinstance(cached.ids, np.memmap)
    assert cached.tokenizer.decode(cached.ids) == big_text


def test_get_batch_on_uint16_memmap(big_corpus_path):
    corpus = data.load_corpus(big_corpus_path)
    ids = np.asarray(corpus.ids)
    x, y = data.get_batch(jax.random.key(5), jnp.asarray(corpus.ids), 16, 16)
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == np.int32 and x.max() > 255  # ids above uint8 survive
    windows = np.lib.stride_tricks.sliding_window_view(ids, 17)
    for row_x, row_y in zip(x, y):
        match = np.flatnonzero((windows[:, :16] == row_x).all(axis=1) & (windows[:, 1:] == row_y).all(axis=1))
        assert match.size > 0


# ----------------------------------------------------------------------------- corpus loading and the cache

def test_load_corpus_caches_ids_and_the_second_load_is_memory_mapped(tmp_path):
    text = MIXED * 50
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    first = data.load_corpus(path)
    np.testing.assert_array_equal(first.ids, naive_encode(text)[1])
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


@pytest.mark.parametrize("before, after", [("abcabc\n" * 20, "xyz zyx\n" * 20),  # another vocabulary
                                           (MIXED, MIXED.replace("end", "END!"))])  # same name, new content
def test_changed_file_invalidates_the_cache(tmp_path, before, after):
    path = tmp_path / "corpus.txt"
    path.write_text(before, encoding="utf-8")
    first = data.load_corpus(path)
    data.load_corpus(path)  # now cached
    path.write_text(after, encoding="utf-8")
    changed = data.load_corpus(path)
    assert changed.sha256 != first.sha256
    chars, expected = naive_encode(after)
    assert changed.tokenizer.chars == chars
    np.testing.assert_array_equal(changed.ids, expected)
    assert changed.tokenizer.decode(changed.ids) == after


def test_load_corpus_sha256_matches_hashlib(data_path, corpus):
    assert corpus.sha256 == hashlib.sha256(data_path.read_bytes()).hexdigest() == data.TINYSHAKESPEARE_SHA256
    assert corpus.tokenizer.vocab_size == 65
    assert corpus.tokenizer.chars[0] == "\n"  # the lecture's default context, id 0


@pytest.mark.parametrize("make, code", [
    (lambda d: d / "nope.txt", "data_missing"),
    (lambda d: d, "data_is_dir"),
    (lambda d: (d / "empty.txt").write_bytes(b"") or d / "empty.txt", "data_empty"),
])
def test_unreadable_data_is_a_usage_error(tmp_path, make, code):
    with pytest.raises(UsageError) as info:
        data.load_corpus(make(tmp_path))
    assert info.value.code == code


def test_check_sizes_names_the_split_that_is_too_short(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 6)
    corpus = data.load_corpus(path)
    train, val = data.split(corpus.ids, 0.1)
    data.check_sizes(corpus, train, val, 4)
    for block, code in [(60, "data_too_short"), (5, "val_too_short")]:
        with pytest.raises(UsageError) as info:
            data.check_sizes(corpus, train, val, block)
        assert info.value.code == code
    with pytest.raises(UsageError) as info:
        data.check_sizes(corpus, *data.split(corpus.ids, 0.95), 5)
    assert info.value.code == "train_too_short"


@pytest.mark.parametrize("block, val_fraction", [(1, 0.1), (8, 0.1), (256, 0.1), (5, 0.5), (3, 0.95), (64, 0.013)])
def test_min_text_length_is_the_shortest_text_check_sizes_accepts(tmp_path, block, val_fraction):
    need = data.min_text_length(block, val_fraction)
    for n, fits in ((need - 1, False), (need, True), (need + 1, True), (3 * need, True)):
        path = tmp_path / f"{n}.txt"
        path.write_text("ab" * (n // 2) + "a" * (n % 2))
        corpus = data.load_corpus(path)
        if fits:
            data.check_sizes(corpus, *data.split(corpus.ids, val_fraction), block)
            data.check_length_for(corpus, "bench", {"a run": (block, val_fraction), "a smaller one": (1, 0.5)})
            continue
        with pytest.raises(UsageError):
            data.check_sizes(corpus, *data.split(corpus.ids, val_fraction), block)
        with pytest.raises(UsageError) as info:
            data.check_length_for(corpus, "bench", {"a smaller one": (1, 0.5), "a run": (block, val_fraction)})
        assert info.value.code == "text_too_short_for" and f"at least {need} characters (a run uses block_size " \
            f"{block}" in str(info.value) and f"has {n}:" in str(info.value)


# ----------------------------------------------------------------------------- where the text comes from

def test_resolve_data_path_order(tmp_path, monkeypatch):
    """--data, then the checkpoint's recorded file (if it still exists), then $JAXBIGRAM_DATA, then data.path, then
    the cached tinyshakespeare."""
    recorded, env, cfg = (write_text(tmp_path / n) for n in ("recorded.txt", "env.txt", "cfg.txt"))
    monkeypatch.setenv(data.DATA_ENV, str(env))
    assert data.resolve_data_path("flag.txt", recorded=str(recorded), config_path=str(cfg)) == \
        (data.Path("flag.txt"), "--data")
    assert data.resolve_data_path(None, recorded=str(recorded), config_path=str(cfg)) == (recorded, "checkpoint")
    assert data.resolve_data_path(None, recorded=str(tmp_path / "gone.txt"), config_path=str(cfg)) == \
        (env, f"${data.DATA_ENV}")
    monkeypatch.delenv(data.DATA_ENV)
    assert data.resolve_data_path(None, config_path=str(cfg)) == (cfg, "config")


def test_resolve_data_path_uses_the_verified_cache(tmp_path, monkeypatch, data_path):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "jaxbigram" / "tinyshakespeare" / "input.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data_path.read_bytes())
    assert data.resolve_data_path(None) == (cached, "cache")


@pytest.mark.parametrize("source", ["--data", "JAXBIGRAM_DATA", "data.path"])
def test_resolve_data_path_checks_the_path_it_was_given_naming_where_it_came_from(source, tmp_path, monkeypatch):
    too_long = str(tmp_path / ("n" * 300) / "input.txt")
    monkeypatch.setenv(data.DATA_ENV, too_long if source == "JAXBIGRAM_DATA" else "")
    with pytest.raises(UsageError) as info:
        data.resolve_data_path(too_long if source == "--data" else None,
                               config_path=too_long if source == "data.path" else "")
    assert info.value.code == "path_too_long" and str(info.value).endswith(f"use a shorter path for {source}")


def test_without_any_text_or_user_cache_folder_it_says_what_to_pass(monkeypatch):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setattr(data, "user_cache_dir", lambda: None)  # no HOME, no passwd entry, no XDG_CACHE_HOME
    with pytest.raises(UsageError) as info:
        data.resolve_data_path(None)
    assert info.value.code == "data_no_cache" and "--data PATH" in str(info.value)
    assert data._cache_paths(data.Path("/texts/input.txt"), "0" * 64) == [  # the cache beside the text only
        (data.Path(f"/texts/input.txt.jaxbigram-{'0' * 16}.ids.npy"),
         data.Path(f"/texts/input.txt.jaxbigram-{'0' * 16}.vocab.json"))]


def write_text(path):
    path.write_text("some text\n")
    return path


def test_read_text_file_reads_a_prompt_as_is(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("ROMEO:\r\n é".encode())
    assert files.read_text_file(path) == "ROMEO:\r\n é"  # as is: no newline translation
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    for path in (tmp_path / "missing.txt", bad):
        with pytest.raises(UsageError) as info:
            files.read_text_file(path)
        assert str(path) in str(info.value) and "--prompt-file" in str(info.value)


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
