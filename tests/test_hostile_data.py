"""Hostile inputs to data.py, config.py and memory.py: files that are not regular files, paths that are not UTF-8,
byte-order marks, a tampered ids cache, integers JAX cannot hold, non-finite floats, runs too big for the memory.

Every refusal is one ``UsageError`` (one line, naming what to change); nothing hangs, nothing is read forever.
"""

import json
import math
import os
import socket

import numpy as np
import pytest

from jaxbigram import config, data, files, memory
from jaxbigram.errors import JaxbigramError, printable_path

BAD_NAME = os.fsdecode(b"corpus-\xff\xfe.txt")  # not UTF-8: Python holds it as lone surrogates


def error_of(fn, *args, **kwargs) -> JaxbigramError:
    with pytest.raises(JaxbigramError) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text and "\r" not in text  # one line
    text.encode("utf-8")  # printable whatever the path: no lone surrogates
    return info.value


def naive_ids(text):
    chars = sorted(set(text))
    return "".join(chars), np.asarray([chars.index(c) for c in text])


# ----------------------------------------------------------------------------- 1. not a regular file

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.txt"
    os.mkfifo(path)
    return path


def test_load_corpus_refuses_a_fifo_without_opening_it(fifo):
    # opening a FIFO for reading blocks until a writer comes: this test would hang if it were opened
    err = error_of(data.load_corpus, fifo)
    assert err.code == "data_not_regular"
    assert str(err) == (f"data path {fifo} is a named pipe (FIFO), not a regular file (reading it could block or "
                        f"never end): pass a regular text file with --data PATH")


@pytest.mark.parametrize("device, kind", [("/dev/zero", "a character device"), ("/dev/null", "a character device")])
def test_load_corpus_refuses_a_character_device(device, kind):
    assert os.path.exists(device)  # every Linux has them
    err = error_of(data.load_corpus, device)
    assert err.code == "data_not_regular" and kind in str(err) and device in str(err)


def test_load_corpus_refuses_a_socket(tmp_path):
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        err = error_of(data.load_corpus, path)
    assert err.code == "data_not_regular" and "a socket" in str(err)


def test_a_symlink_to_a_fifo_is_refused_and_a_symlink_to_a_file_is_followed(tmp_path, fifo):
    link = tmp_path / "link.txt"
    link.symlink_to(fifo)
    assert error_of(data.load_corpus, link).code == "data_not_regular"
    real = tmp_path / "real.txt"
    real.write_text("hello world\n" * 3, encoding="utf-8")
    link.unlink()
    link.symlink_to(real)
    assert data.load_corpus(link, use_cache=False).tokenizer.chars == "".join(sorted(set("hello world\n")))


def test_read_text_file_refuses_what_load_corpus_refuses(tmp_path, fifo):
    err = error_of(files.read_text_file, fifo)
    assert err.code == "file_not_regular"
    assert str(err) == (f"prompt file {fifo} is a named pipe (FIFO), not a regular file (reading it could block or "
                        f"never end): pass a regular text file with --prompt-file")
    if os.path.exists("/dev/zero"):
        assert error_of(files.read_text_file, "/dev/zero").code == "file_not_regular"
    assert error_of(files.read_text_file, tmp_path / "none.txt").code == "file_missing"
    assert error_of(files.read_text_file, tmp_path).code == "file_is_dir"
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert error_of(files.read_text_file, empty).code == "file_empty"
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    err = error_of(files.read_text_file, latin1)
    assert err.code == "file_not_utf8" and "offset 3" in str(err)


def test_read_text_file_states_its_size_cap(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * 101)
    err = error_of(files.read_text_file, big, "prompt file", "--prompt-file", max_bytes=100)
    assert err.code == "file_too_big"
    assert str(err) == (f"prompt file {big} is 101 bytes, more than the 100 bytes allowed: pass a smaller file "
                        f"with --prompt-file")
    big.write_bytes(b"a" * 100)
    assert files.read_text_file(big, max_bytes=100) == "a" * 100
    assert files.PROMPT_FILE_MAX_BYTES == 1 << 20


def test_read_text_file_reads_utf8_and_drops_a_bom(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(files.UTF8_BOM + "ROMEO: ✓\n".encode("utf-8"))
    assert files.read_text_file(path) == "ROMEO: ✓\n"


def test_check_regular_file_opens_nothing(fifo, tmp_path):
    err = error_of(files.check_regular_file, fifo, "--prompt-file", "prompt file")
    assert err.code == "file_not_regular"
    ok = tmp_path / "ok.txt"
    ok.write_text("x", encoding="utf-8")
    assert files.check_regular_file(ok, "--prompt-file").st_size == 1


def test_stat_errors_other_than_missing_are_one_line(tmp_path):
    long_name = tmp_path / ("x" * 300)  # ENAMETOOLONG: Path.exists() raised it before
    err = error_of(data.load_corpus, long_name)
    assert err.code == "data_unreadable" and "File name too long" in str(err)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert error_of(data.load_corpus, loop).code == "data_unreadable"
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    assert error_of(data.load_corpus, afile / "below").code == "data_missing"  # ENOTDIR


def test_a_path_with_a_nul_byte_is_refused():
    assert error_of(data.load_corpus, "a\0b.txt").code == "path_nul"
    assert error_of(data.check_path_encodable, "a\0b", "--out", "output").code == "path_nul"


def test_a_data_file_bigger_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text("abc" * 100, encoding="utf-8")
    monkeypatch.setattr(memory, "available_memory_bytes", lambda *a, **k: 500)
    err = error_of(data.load_corpus, path)
    assert err.code == "data_too_big"
    assert str(err) == (f"data file {path} (300 B) needs about 600 B of memory to load but only 500 B is available: "
                        f"use a smaller text or free memory")


def test_a_corpus_longer_than_int32_indices_is_refused():
    ids = np.broadcast_to(np.uint8(0), (2**31,))  # no memory: one element, stride 0
    corpus = data.Corpus(ids=ids, tokenizer=data.Tokenizer("a"), path="huge.txt", sha256="0" * 64)
    err = error_of(data.check_sizes, corpus, ids[:10], ids[:10], 8)
    assert str(err) == ("data file huge.txt has 2147483648 characters, more than JAX's int32 indices reach "
                        "(2147483647): use a shorter text")


# ----------------------------------------------------------------------------- 2. paths that are not UTF-8

def test_printable_path_renders_any_path_on_one_encodable_line():
    assert printable_path("/tmp/plain ✓.txt") == "/tmp/plain ✓.txt"
    assert printable_path(BAD_NAME) == "corpus-\\xff\\xfe.txt"
    assert printable_path(b"/tmp/x\xff") == "/tmp/x\\xff"
    assert printable_path("a\nb\tc\x1b") == "a\\nb\\tc\\x1b"
    from pathlib import Path

    assert printable_path(Path(BAD_NAME)) == "corpus-\\xff\\xfe.txt"


def test_load_corpus_refuses_a_path_that_is_not_utf8_with_one_printable_line(tmp_path):
    path = tmp_path / BAD_NAME
    path.write_text("some text\n" * 5, encoding="utf-8")
    err = error_of(data.load_corpus, path)
    assert err.code == "path_not_utf8"
    assert "corpus-\\xff\\xfe.txt" in str(err) and "--data PATH" in str(err)


def test_check_path_encodable_names_the_flag(tmp_path):
    data.check_path_encodable(tmp_path / "fine ✓", "--workdir")
    err = error_of(data.check_path_encodable, tmp_path / BAD_NAME / "run", "--workdir", "workdir")
    assert err.code == "path_not_utf8"
    assert str(err) == (f"workdir path {tmp_path}/corpus-\\xff\\xfe.txt/run is not valid UTF-8 (checkpoints store "
                        f"paths as UTF-8 text and orbax/TensorStore cannot open it): rename it, or pass a symlink "
                        f"with a UTF-8 name, with --workdir")
    assert error_of(files.read_text_file, tmp_path / BAD_NAME).code == "path_not_utf8"


def test_errors_name_a_path_with_a_newline_on_one_line(tmp_path):
    err = error_of(data.load_corpus, tmp_path / "two\nlines.txt")
    assert err.code == "data_missing" and "two\\nlines.txt" in str(err)


# ----------------------------------------------------------------------------- 3. byte-order mark

def test_a_bom_is_stripped_not_a_character_and_the_sha_is_of_the_file(tmp_path):
    import hashlib

    text = "héllo wörld\n" * 20
    path = tmp_path / "bom.txt"
    path.write_bytes(files.UTF8_BOM + text.encode("utf-8"))
    for _ in range(2):  # encoded, then from the cache
        corpus = data.load_corpus(path)
        chars, ids = naive_ids(text)
        assert corpus.bom_stripped is True
        assert "\ufeff" not in corpus.tokenizer.chars and corpus.tokenizer.chars == chars
        np.testing.assert_array_equal(corpus.ids, ids)
        assert corpus.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    plain = tmp_path / "plain.txt"
    plain.write_text(text, encoding="utf-8")
    assert data.load_corpus(plain).bom_stripped is False


def test_an_ascii_text_with_a_bom_takes_the_ascii_path(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(files.UTF8_BOM + b"ab\n" * 10)
    corpus = data.load_corpus(path, use_cache=False)
    assert corpus.tokenizer.chars == "\nab" and corpus.ids.dtype == np.uint8 and len(corpus.ids) == 30


def test_a_bom_alone_is_an_empty_file(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(files.UTF8_BOM)
    assert error_of(data.load_corpus, path).code == "data_empty"


def test_utf8_error_offsets_count_the_bom(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(files.UTF8_BOM + "aé".encode("utf-8") + b"\xff")  # the bad byte is byte 6 of the file
    err = error_of(data.load_corpus, path, use_cache=False)
    assert err.code == "data_not_utf8" and err.fields["offset"] == 6
    assert error_of(files.decode_utf8, path.read_bytes(), path).fields["offset"] == 6


def test_decode_utf8_drops_the_bom_for_eval():
    assert files.decode_utf8(files.UTF8_BOM + b"abc", "x") == "abc"


# ----------------------------------------------------------------------------- 4. the ids cache is verified

def cache_files(folder):
    return next(folder.glob("*.ids.npy")), next(folder.glob("*.vocab.json"))


def cached_text(folder, text):
    """Write ``text`` to ``folder/corpus.txt`` and load it once (which writes its ids cache beside it): returns
    (path, (chars, ids) of a naive encoder, ids cache path, vocab cache path)."""
    path = folder / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    data.load_corpus(path)
    return (path, naive_ids(text), *cache_files(folder))


def test_a_tampered_ids_cache_of_the_right_shape_is_rebuilt_and_rewritten(tmp_path):
    path, (_, expected), ids_path, _ = cached_text(tmp_path, "to be or not to be\n" * 50)
    tampered = np.load(ids_path)
    tampered[::3] = 0  # right dtype, right length, wrong ids
    np.save(ids_path, tampered)
    again = data.load_corpus(path)
    np.testing.assert_array_equal(again.ids, expected)
    np.testing.assert_array_equal(np.load(ids_path), expected)  # the cache was rewritten
    assert isinstance(data.load_corpus(path).ids, np.memmap)  # and serves again


@pytest.mark.parametrize("damage", ["chars", "sha256", "checksum", "format", "not json", "truncated npy",
                                    "npy is a fifo", "json list"])
def test_any_mismatch_in_the_cache_rebuilds(tmp_path, damage):
    path, (chars, expected), ids_path, vocab_path = cached_text(tmp_path, "abcdefg hij\n" * 40)
    meta = json.loads(vocab_path.read_text(encoding="utf-8"))
    if damage == "chars":
        meta["chars"] = meta["chars"][::-1]  # same length, same dtype: the ids would decode to other characters
    elif damage in ("sha256", "checksum"):
        meta[damage] = "0" * 64
    elif damage == "format":
        meta["format"] = 1
    if damage == "not json":
        vocab_path.write_text("{", encoding="utf-8")
    elif damage == "json list":
        vocab_path.write_text("[1, 2]", encoding="utf-8")
    elif damage == "truncated npy":
        ids_path.write_bytes(ids_path.read_bytes()[:-7])
    elif damage == "npy is a fifo":
        ids_path.unlink()
        os.mkfifo(ids_path)
    else:
        vocab_path.write_text(json.dumps(meta), encoding="utf-8")
    again = data.load_corpus(path)
    assert again.tokenizer.chars == chars
    np.testing.assert_array_equal(again.ids, expected)


def test_the_cache_stores_the_source_sha_and_a_checksum(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("xyz\n" * 10, encoding="utf-8")
    corpus = data.load_corpus(path)
    meta = json.loads(cache_files(tmp_path)[1].read_text(encoding="utf-8"))
    assert meta["format"] == data._CACHE_FORMAT == 2
    assert meta["sha256"] == corpus.sha256
    assert meta["checksum"].startswith("sha256:") and len(meta["checksum"]) == 7 + 64


def test_a_stale_cache_of_the_old_format_is_not_trusted(tmp_path):
    """Format 1 (no sha, no checksum) with wrong ids of the right dtype and length was trusted before."""
    text = "hello there\n" * 30
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    corpus = data.load_corpus(path, use_cache=False)
    ids_path, vocab_path = data._cache_paths(path, corpus.sha256)[0]
    np.save(ids_path, np.zeros(len(text), dtype=np.uint8))
    vocab_path.write_text(json.dumps({"format": 1, "chars": corpus.tokenizer.chars, "length": len(text)}),
                          encoding="utf-8")
    np.testing.assert_array_equal(data.load_corpus(path).ids, naive_ids(text)[1])


# ----------------------------------------------------------------------------- 5. integers and floats

@pytest.mark.parametrize("key", ["train.steps", "train.steps_per_call", "train.warmup_steps", "eval.interval",
                                 "checkpoint.interval", "eval.iters", "train.batch_size", "train.block_size",
                                 "checkpoint.keep"])
def test_integer_keys_must_fit_int32(key):
    err = error_of(config.load, None, [f"{key}={2**31}"])
    assert err.code == "config_range" and key in str(err)
    assert "2147483647" in str(err) and "int32" in str(err)
    other = {"train.batch_size": ["train.block_size=1"], "train.block_size": ["train.batch_size=1"]}.get(key, [])
    section, name = key.split(".")
    assert getattr(getattr(config.load(None, [f"{key}={2**31 - 1}", *other]), section), name) == 2**31 - 1


def test_batch_times_block_must_fit_int32():
    err = error_of(config.load, None, ["train.batch_size=65536", "train.block_size=65536"])
    assert err.code == "config_product"
    assert str(err) == ("config keys train.batch_size × train.block_size multiply to 4294967296, more than "
                        "2147483647 (a batch's ids are indexed with int32): lower one of them")
    assert config.load(None, ["train.batch_size=65536", "train.block_size=32767"]).train.block_size == 32767


@pytest.mark.parametrize("seed", [0, 1337, 2**32 - 1, 2**32, 2**32 + 5, 2**63 - 1, 2**63, 2**64, 10**30])
def test_any_non_negative_seed_reduces_to_a_key_jax_accepts(seed):
    import jax

    reduced = config.reduce_seed(seed)
    assert reduced == seed % 2**32
    key_data = jax.random.key_data(jax.random.key(reduced))  # never OverflowError
    if seed < 2**63:  # where JAX accepted the seed itself, the key is unchanged
        np.testing.assert_array_equal(key_data, jax.random.key_data(jax.random.key(seed)))
    cfg = config.load(None, [f"train.seed={seed}"])
    assert cfg.train.seed == reduced
    jax.random.key(cfg.train.seed)


def test_reduce_seed_refuses_what_is_not_a_seed():
    with pytest.raises(ValueError):
        config.reduce_seed(-1)
    for bad in (1.5, True, "3"):  # not an integer: the TypeError of the library's checks
        with pytest.raises(TypeError, match="seed must be an integer >= 0"):
            config.reduce_seed(bad)
    assert error_of(config.load, None, ["train.seed=-1"]).code == "config_range"


@pytest.mark.parametrize("key", ["train.learning_rate", "train.weight_decay", "train.grad_clip", "train.min_lr_ratio",
                                 "train.beta1", "train.beta2", "data.val_fraction"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "1" + "0" * 400])
def test_non_finite_floats_are_refused(key, value):
    err = error_of(config.load, None, [f"{key}={value}"])
    assert err.code == "config_not_finite" and key in str(err) and "finite" in str(err)


def test_non_finite_learning_rate_in_a_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlearning_rate = inf\n", encoding="utf-8")
    err = error_of(config.load, path)
    assert str(err) == "config key train.learning_rate must be a finite number, got inf"


def test_config_file_that_is_a_fifo_or_device_is_refused(tmp_path, fifo):
    err = error_of(config.load, fifo)
    assert err.code == "file_not_regular" and "--config" in str(err) and "config file" in str(err)
    if os.path.exists("/dev/zero"):
        assert error_of(config.load, "/dev/zero").code == "file_not_regular"
    assert error_of(config.load, tmp_path).code == "file_is_dir"
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (config.CONFIG_MAX_BYTES + 1))
    assert error_of(config.load, big).code == "file_too_big"


def test_config_with_a_bom_and_an_empty_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(files.UTF8_BOM + b"[train]\nsteps = 7\n")
    assert config.load(path).train.steps == 7
    path.write_bytes(b"")
    assert config.load(path) == config.Config()


def test_config_data_path_with_a_nul_is_refused():
    err = error_of(config.load, None, ['data.path="a\\u0000b"'])
    assert err.code == "config_range" and "data.path" in str(err)


# ----------------------------------------------------------------------------- 6. memory estimate

GIB = 1 << 30


def test_estimate_terms_for_the_bigram():
    terms = memory.estimate_bytes(65, 32, 8, 200, 1000)
    assert terms["params"] == 65 * 65 * 4
    assert terms["optimizer"] == 2 * terms["params"] and terms["gradients"] == terms["params"]
    assert terms["batch_buffers"] == 1000 * 2 * 32 * 8 * 4  # all 1000 steps drawn at once (512k ids ≤ 2**21)
    assert terms["eval_batch"] == 2 * 32 * 8 * 65 * 4  # one batch, not 200
    assert terms["eval_keys"] == 2 * 200 * 12
    assert terms["step_losses"] == 4000


def test_batch_buffer_matches_train_chunk():
    from jaxbigram import train

    assert memory.BATCH_BUFFER_ELEMENTS == train.DEFAULT_BATCH_BUFFER
    for batch, block, steps in [(32, 8, 1000), (128, 32, 1000), (4096, 256, 10), (1, 1, 5)]:
        per_draw = train._steps_per_draw(steps, 2 * batch * block, train.DEFAULT_BATCH_BUFFER)
        assert memory.estimate_bytes(65, batch, block, 1, steps)["batch_buffers"] == per_draw * 2 * batch * block * 4


def test_a_second_model_supplies_its_own_params_and_activations():
    terms = memory.estimate_bytes(65, 64, 256, 200, 100, num_params=10_000_000, activation_bytes=123)
    assert terms["params"] == 40_000_000 and terms["optimizer"] == 80_000_000 and terms["activations"] == 123


@pytest.mark.parametrize("kwargs, term, advice", [
    (dict(vocab_size=60_000), "optimizer", "fewer distinct characters"),
    (dict(batch_size=10**9), "activations", "lower train.batch_size"),
    (dict(eval_iters=10**9), "eval_keys", "lower eval.iters"),
])
def test_runs_too_big_for_the_memory_give_one_line(kwargs, term, advice):
    args = dict(vocab_size=65, batch_size=32, block_size=8, eval_iters=200, steps_per_call=1000) | kwargs
    err = error_of(memory.check_fits, memory.estimate_bytes(**args), 16 * GIB)
    assert err.code == "too_big" and err.fields["term"] == term and advice in str(err)
    assert str(err).startswith("this run needs about ") and "only 16.0 GiB is available" in str(err)


def test_the_default_config_fits(repo_root):
    cfg = config.load(repo_root / "configs" / "default.toml")
    terms = memory.estimate_for_config(cfg, 65, data_ids=1_115_394)
    assert memory.check_fits(terms, 256 * 1024 * 1024) == sum(terms.values())  # well under 256 MiB
    memory.check_fits(terms, memory.available_memory_bytes())
    memory.check_fits(terms, None)  # unknown: no check


def test_available_memory_reads_meminfo_and_the_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   8000000 kB\n", encoding="ascii")
    cg = tmp_path / "cg"
    cg.mkdir()
    assert memory.available_memory_bytes(meminfo=str(meminfo), cgroup_root=str(cg)) == 8_000_000 * 1024
    (cg / "memory.max").write_text("max\n", encoding="ascii")
    assert memory.available_memory_bytes(meminfo=str(meminfo), cgroup_root=str(cg)) == 8_000_000 * 1024
    (cg / "memory.max").write_text(f"{2 * GIB}\n", encoding="ascii")
    (cg / "memory.current").write_text(f"{GIB // 2}\n", encoding="ascii")
    assert memory.available_memory_bytes(meminfo=str(meminfo), cgroup_root=str(cg)) == GIB + GIB // 2
    assert memory.available_memory_bytes(meminfo=str(tmp_path / "none"), cgroup_root=str(tmp_path / "none")) is None
    real = memory.available_memory_bytes()
    assert real is None or real > 0


def test_available_memory_of_a_device_with_stats():
    class Device:
        def memory_stats(self):
            return {"bytes_limit": 80 * GIB, "bytes_in_use": 2 * GIB}

    assert memory.available_memory_bytes(Device()) == 78 * GIB


def test_human_bytes():
    assert [memory.human_bytes(n) for n in (0, 1023, 1536, 16 * GIB)] == ["0 B", "1023 B", "1.5 KiB", "16.0 GiB"]
    assert math.isclose(float(memory.human_bytes(2**60).split()[0]), 1024.0)
