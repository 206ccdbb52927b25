"""The speed work changes how things are computed, never what: each fast path against a plain reference."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tracemalloc
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbigram import data, runtime, train
from jaxbigram.config import TrainConfig
from jaxbigram.errors import UsageError

MIXED = "Hé said: «中文» 😀!\r\nαβγ, naïve café.\n" * 3 + "tail"


@pytest.fixture(scope="module")
def ids() -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(0).integers(0, 17, 5000).astype(np.uint8))


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("budget", [train.BATCH_BUFFER_ELEMENTS, 2 * 4 * 3 * 2])  # one draw / a draw every 2 steps
def test_train_chunk_equals_one_jitted_step_at_a_time(ids, monkeypatch, budget):
    """Batches drawn up front (all at once, or a few steps at a time) give bit-identical steps and losses."""
    cfg = TrainConfig(batch_size=4, block_size=3, learning_rate=0.05, lr_schedule="cosine", warmup_steps=2, steps=20)
    base_key = jax.random.key(5)
    step = jax.jit(train.train_step)
    ref = train.create_train_state(jax.random.key(0), 17, cfg)
    ref_losses = []
    for s in range(11):
        x, y = data.get_batch(train.batch_key(base_key, s), ids, 4, 3)
        ref, loss = step(ref, x, y)
        ref_losses.append(float(loss))

    monkeypatch.setattr(train, "BATCH_BUFFER_ELEMENTS", budget)
    train.train_chunk.clear_cache()
    try:
        state = train.create_train_state(jax.random.key(0), 17, cfg)
        state, a = train.train_chunk(state, ids, base_key, 7, batch_size=4, block_size=3, max_steps=8)
        state, b = train.train_chunk(state, ids, base_key, 4, batch_size=4, block_size=3, max_steps=8)
    finally:
        train.train_chunk.clear_cache()
    a, b = np.asarray(a), np.asarray(b)
    assert np.isnan(a[7:]).all() and np.isnan(b[4:]).all()
    np.testing.assert_array_equal(np.concatenate([a[:7], b[:4]]), np.float32(ref_losses))
    assert int(state.step) == 11
    for got, want in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ----------------------------------------------------------------------------- data prep

@pytest.mark.parametrize("text", [MIXED, "plain ascii\nonly, 123!", "x"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, data.ENCODE_CHUNK_BYTES])
def test_streamed_utf8_encoding_equals_encoding_the_decoded_text(text, chunk):
    tok, got = data.encode_utf8(text.encode("utf-8"), chunk=chunk)
    want_tok, want = data.encode_corpus(text)
    assert tok == want_tok and got.dtype == want.dtype
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
    tok, ids_ = data.encode_utf8(text.encode("utf-8"), chunk=101)
    assert tok.vocab_size == 300 and ids_.dtype == np.uint16 and tok.decode(ids_) == text


def test_cache_is_memory_mapped_and_a_changed_file_is_encoded_again(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(MIXED, encoding="utf-8")
    first = data.load_corpus(path)
    cached = data.load_corpus(path)
    assert isinstance(cached.ids, np.memmap) and cached.sha256 == first.sha256
    np.testing.assert_array_equal(cached.ids, first.ids)
    path.write_text(MIXED.replace("tail", "TAIL!"), encoding="utf-8")  # same name, new content
    changed = data.load_corpus(path)
    assert changed.sha256 != first.sha256
    assert changed.tokenizer.decode(changed.ids) == MIXED.replace("tail", "TAIL!")


def test_bigram_counts_memory_does_not_grow_with_the_corpus():
    """Streaming in chunks: peak memory (numpy allocations, via tracemalloc) is the same for 0.5 M and 4 M ids,
    and far below the size of one int64 copy of the ids; the counts equal a dense numpy count."""
    rng = np.random.default_rng(1)
    peaks = []
    for n in (500_000, 4_000_000):
        ids_ = rng.integers(0, 65, n).astype(np.uint8)
        tracemalloc.start()
        counts = data.bigram_counts(ids_, 65, chunk=1 << 16)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        dense = np.zeros((65, 65), dtype=np.int64)
        np.add.at(dense, (ids_[:-1], ids_[1:]), 1)
        np.testing.assert_array_equal(counts.dense(), dense)
    assert peaks[1] < 1.2 * peaks[0] + (1 << 20)
    assert peaks[1] < 4_000_000 * 8 / 8


def test_bigram_counts_of_a_big_vocabulary_merge_exactly():
    ids_ = np.random.default_rng(2).integers(0, 3000, 200_000).astype(np.uint16)
    counts = data.bigram_counts(ids_, 3000, chunk=1 << 12)
    codes = ids_[:-1].astype(np.int64) * 3000 + ids_[1:]
    u, c = np.unique(codes, return_counts=True)
    np.testing.assert_array_equal(counts.rows.astype(np.int64) * 3000 + counts.cols, u)
    np.testing.assert_array_equal(counts.counts, c)


# ----------------------------------------------------------------------------- process set-up

def test_xla_cpu_tuning_only_where_it_belongs(monkeypatch):
    for name in ("XLA_FLAGS", runtime.XLA_TUNING_ENV, "JAX_PLATFORM_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert runtime.tune_xla_for_cpu(None) and "xla_backend_optimization_level=1" in os.environ["XLA_FLAGS"]
    assert not runtime.tune_xla_for_cpu(None)  # already set: left alone, not duplicated
    assert os.environ["XLA_FLAGS"].count("xla_backend_optimization_level") == 1
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
    assert not runtime.tune_xla_for_cpu("cpu") and os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=3"
    monkeypatch.delenv("XLA_FLAGS")
    assert not runtime.tune_xla_for_cpu("gpu") and "XLA_FLAGS" not in os.environ
    monkeypatch.setenv(runtime.XLA_TUNING_ENV, "off")
    assert not runtime.tune_xla_for_cpu("cpu") and "XLA_FLAGS" not in os.environ


def test_compile_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.COMPILE_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtime.compile_cache_dir() == tmp_path / "jaxbigram" / "xla"
    monkeypatch.setenv(runtime.COMPILE_CACHE_ENV, str(tmp_path / "elsewhere"))
    assert runtime.compile_cache_dir() == Path(tmp_path / "elsewhere")
    monkeypatch.setenv(runtime.COMPILE_CACHE_ENV, "off")
    assert runtime.compile_cache_dir() is None
