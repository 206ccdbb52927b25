"""jaxbigram/lecture.py (the lecture's bigram.py, standalone) against the library and numpy: the same loss and gradient
on the same parameters and batch, the same run as the ``lecture`` preset, ``generate`` and the library's sampler both
drawing from the softmax row (chi-square), the one-line error without a text, and the file itself (≤ 150 lines,
nothing imported from jaxbigram); docs/lecture.md's table names only library functions that exist.

The run comparison uses the preset's batch, block, rate and seed with fewer steps and eval batches (to stay fast); at
the full 3,000 steps compare ``python -m jaxbigram.lecture | grep 'step 3000'`` with the ``step 3000`` line of
``python run.py train --config lecture --workdir runs/lecture --fresh``.
"""

import ast
import importlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxbigram import config, data, lecture, train
from jaxbigram.models.bigram import Bigram, logits_table
from conftest import REPO_ROOT, error_line, write
from reference import np_log_softmax, np_softmax

LECTURE = REPO_ROOT / "jaxbigram" / "lecture.py"
TABLE = REPO_ROOT / "docs" / "lecture.md"
V = 65
EVAL_LINE = re.compile(r"^step (\d+): train loss (\d+\.\d{4}), val loss (\d+\.\d{4})$", re.M)


def test_the_file_is_standalone_and_at_most_150_lines():
    source = LECTURE.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 150
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import"
            imported.add(node.module.split(".")[0])
    assert imported <= {"argparse", "os", "sys", "functools", "flax", "jax", "numpy", "optax"}, imported
    for name in ("encode", "decode", "get_batch", "estimate_loss", "BigramLanguageModel", "generate"):
        assert re.search(rf"\b(def|class) {name}\b|\b{name} = ", source), name
    for literal in ("logits[:, -1, :]", "jax.nn.softmax(", "jax.random.categorical(", "jnp.concatenate("):
        assert literal in source, literal
    assert (lecture.batch_size, lecture.block_size, lecture.max_iters, lecture.eval_interval, lecture.eval_iters,
            lecture.learning_rate, lecture.seed) == (32, 8, 3000, 300, 200, 1e-2, 1337)


@pytest.fixture(scope="module")
def train_ids(corpus):
    return jnp.asarray(data.split(corpus.ids, 0.1)[0])


def test_same_parameters_batch_loss_and_gradient_as_the_library_and_numpy(train_ids):
    model, library = lecture.BigramLanguageModel(V), Bigram(V)
    params = model.init(jax.random.key(5), jnp.zeros((1, 1), jnp.int32))["params"]
    assert jax.tree.map(np.shape, params) == {"token_embedding_table": {"embedding": (V, V)}}
    np.testing.assert_array_equal(logits_table(params), logits_table(library.init(jax.random.key(5))))
    key = jax.random.key(6)
    xb, yb = lecture.get_batch(train_ids, key)
    for mine, theirs in zip((xb, yb), data.get_batch(key, train_ids, 32, 8)):
        np.testing.assert_array_equal(mine, theirs)
    x, y = np.asarray(xb), np.asarray(yb)

    logits, loss = jax.jit(model.apply)({"params": params}, xb)  # m(idx): targets=None, no loss, logits (B, T, C)
    assert loss is None and logits.shape == (32, 8, V)
    np.testing.assert_array_equal(logits, np.asarray(logits_table(params))[x])
    lecture_loss, lecture_grads = jax.jit(jax.value_and_grad(lambda p: model.apply({"params": p}, xb, yb)[1]))(params)
    library_loss, library_grads = jax.jit(jax.value_and_grad(library.loss))(params, xb, yb)
    table = np.asarray(logits_table(params), np.float64)
    expected = -np_log_softmax(table)[x, y].mean()  # the mean negative log-likelihood of the targets
    np.testing.assert_allclose(float(lecture_loss), expected, rtol=1e-6)
    np.testing.assert_allclose(float(library_loss), expected, rtol=1e-6)

    delta = np_softmax(table)[x.ravel()]  # d loss / d W[i] = Σ_{x = i} (softmax(W[i]) − onehot(y)) / (B·T)
    delta[np.arange(x.size), y.ravel()] -= 1.0
    closed_form = np.zeros((V, V))
    np.add.at(closed_form, x.ravel(), delta / x.size)
    for grads in (lecture_grads, library_grads):
        np.testing.assert_allclose(logits_table(grads), closed_form, rtol=1e-5, atol=1e-7)


def test_one_step_equals_the_librarys_train_step(train_ids):
    """One AdamW step of lecture.train_step and of train.train_step with the ``lecture`` preset's optimizer."""
    model, library = lecture.BigramLanguageModel(V), Bigram(V)
    cfg = config.load("lecture").train
    state = train.create_train_state(jax.random.key(7), library, cfg)
    optimizer = lecture.optax.adamw(lecture.learning_rate, weight_decay=0.01)
    xb, yb = lecture.get_batch(train_ids, jax.random.key(8))
    params, _, loss = lecture.train_step(model, optimizer, state.params, optimizer.init(state.params), xb, yb)
    state, library_loss = train.train_step(state, xb, yb)
    np.testing.assert_allclose(float(loss), float(library_loss), rtol=1e-6)
    np.testing.assert_allclose(logits_table(params), logits_table(state.params), rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits_table(params), logits_table(train.create_train_state(
        jax.random.key(7), library, cfg).params))  # the step did move the table


def test_the_run_prints_the_librarys_lecture_preset_losses_and_a_sample(capsys, data_path, corpus):
    """The lecture preset's batch, block, rate and seed at 200 steps, evals every 100 over 20 batches: the lecture
    file's printed losses and the library's history agree within 0.02 (they share keys: in fact to ~1e-4)."""
    code = lecture.main(["--data", str(data_path), "--max-iters", "200", "--eval-interval", "100",
                         "--eval-iters", "20", "--max-new-tokens", "40"])
    out = capsys.readouterr().out
    assert code == 0
    printed = {int(s): (float(t), float(v)) for s, t, v in EVAL_LINE.findall(out)}
    assert sorted(printed) == [0, 100, 200]
    cfg = config.load("lecture", ["train.steps=200", "eval.interval=100", "eval.iters=20", "checkpoint.interval=200"])
    result = train.fit(cfg, corpus, None, out=_Sink(), err=_Sink())
    history = {row["step"]: (row["train_loss"], row["val_loss"]) for row in result.history}
    assert sorted(history) == [0, 100, 200]
    for step, (train_loss, val_loss) in printed.items():
        assert abs(val_loss - history[step][1]) <= 0.02 and abs(train_loss - history[step][0]) <= 0.02, step
    assert printed[200][1] < printed[0][1] - 1.0  # it did learn
    sample = out.rstrip("\n").split("step 200: ", 1)[1].split("\n", 1)[1]
    assert len(sample) == 41 and set(sample) <= set(corpus.tokenizer.chars)  # '\n' + 40 characters


class _Sink:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


def _chi_square_p(draws, probs) -> float:
    """p-value of the counts of ``draws`` against ``probs`` (classes expected fewer than 5 times pooled into one)."""
    n = len(draws)
    observed = np.bincount(np.asarray(draws).ravel(), minlength=len(probs)).astype(np.float64)
    expected = probs * n
    small = expected < 5
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    return float(stats.chisquare(observed[keep], expected[keep] * observed.sum() / expected[keep].sum()).pvalue)


@pytest.mark.parametrize("char", [0, 39])  # '\n' and 'a'
def test_generate_and_the_librarys_sampler_draw_from_the_softmax_row(char):
    """20,000 one-step draws each: chi-square against softmax(W[char]); a table sharpened x2 so rows are peaky."""
    model = lecture.BigramLanguageModel(V)
    params = jax.tree.map(lambda w: 2 * w, model.init(jax.random.key(9), jnp.zeros((1, 1), jnp.int32))["params"])
    probs = np_softmax(np.asarray(logits_table(params), np.float64)[char])
    n = 20_000
    out = model.apply({"params": params}, jnp.full((n, 1), char, jnp.int32), 1, jax.random.key(10),
                      method=lecture.BigramLanguageModel.generate)
    assert out.shape == (n, 2) and bool((out[:, 0] == char).all())  # (B, T) -> (B, T + 1), the prompt kept
    library = Bigram(V).sample(params, jax.random.key(11), [char], 1, num_samples=n)
    assert library.shape == (n, 1)
    for draws in (out[:, 1], library[:, 0]):
        assert _chi_square_p(draws, probs) > 1e-3
    wrong = np_softmax(np.asarray(logits_table(params), np.float64)[(char + 1) % V])
    assert _chi_square_p(out[:, 1], wrong) < 1e-6  # the test can tell another row apart


def test_generate_returns_the_prompt_and_max_new_tokens_more():
    model = lecture.BigramLanguageModel(V)
    params = model.init(jax.random.key(12), jnp.zeros((1, 1), jnp.int32))["params"]
    prompt = jnp.asarray([[1, 2, 3], [4, 5, 6]], jnp.int32)
    out = model.apply({"params": params}, prompt, 5, jax.random.key(13), method=lecture.BigramLanguageModel.generate)
    assert out.shape == (2, 3 + 5)  # (B, T + max_new_tokens), not (B, max_new_tokens)
    np.testing.assert_array_equal(out[:, :3], prompt)
    assert int(out.min()) >= 0 and int(out.max()) < V


def test_no_text_is_one_error_line_and_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("JAXBIGRAM_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no input.txt here
    cases = {(): "'input.txt'", ("--data", str(tmp_path / "nope.txt")): "nope.txt",
             ("--data", str(write(tmp_path / "latin1.txt", b"caf\xe9 " * 100))): "UnicodeDecodeError",
             ("--data", str(write(tmp_path / "short.txt", "to be"))): "5 characters",
             ("--eval-interval", "0"): "--eval-interval"}
    for argv, fragment in cases.items():
        assert lecture.main(list(argv)) == 2, argv
        captured = capsys.readouterr()
        line = error_line(captured.err)
        assert captured.out == "" and captured.err == line + "\n" and fragment in line, (argv, line)
        assert "--data PATH" in line or argv[0] == "--eval-interval", line
    env_text = write(tmp_path / "input.txt", "")  # an empty ./input.txt: found, then refused as too short
    assert lecture.main([]) == 2 and "0 characters" in error_line(capsys.readouterr().err)
    monkeypatch.setenv("JAXBIGRAM_DATA", str(tmp_path / "missing-from-env.txt"))  # the variable wins over ./input.txt
    assert lecture.main([]) == 2 and "missing-from-env.txt" in error_line(capsys.readouterr().err)
    assert env_text.exists()


def test_python_dash_m_exits_2_with_the_error_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "jaxbigram.lecture"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "pass --data PATH" in error_line(proc.stderr) and "JAXBIGRAM_DATA" in proc.stderr


def _table_rows():
    rows = [line for line in TABLE.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip().strip("|").split("|")]
    assert header[-2:] == ["lecture.py", "library"] and set(rows[1]) <= set("|-: ")
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows[2:]]


def _resolve(name: str):
    """``a.b.c.d`` → the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            target = getattr(target, attr)
        return target
    raise ImportError(name)


def test_the_pytorch_to_jax_table_has_every_construct_and_names_real_lines_and_library_functions():
    rows = _table_rows()
    constructs = " ".join(row[0] for row in rows)
    for construct in ("nn.Module", "nn.Embedding", "forward", "__call__", "m(xb, yb)", "targets=None", "view",
                      "F.cross_entropy", "zero_grad", "backward", "step", "torch.manual_seed", "torch.randint",
                      "F.softmax", "torch.multinomial", "torch.cat", "model.eval()", "torch.no_grad()",
                      "torch.optim.AdamW", "import torch.nn as nn", "functional as F"):
        assert construct in constructs, construct
    source = LECTURE.read_text(encoding="utf-8").splitlines()
    for row in rows:
        line = re.fullmatch(r"\[(\d+)\]\(\.\./jaxbigram/lecture\.py#L(\d+)\) `([^`]+)`", row[-2])
        assert line and line[1] == line[2], row[-2]
        assert line[3] in source[int(line[1]) - 1], (row[-2], source[int(line[1]) - 1])  # the link shows that line
        names = re.findall(r"`(jaxbigram\.[\w.]+)`", row[-1])
        assert names, row[-1]
        for name in names:
            assert callable(_resolve(name)) or hasattr(_resolve(name), "__file__"), name
