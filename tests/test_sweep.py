"""sweep.py: a member equals its single run, a resumed sweep equals an uninterrupted one, shape keys are refused."""

import io
import json

import jax
import numpy as np
import pytest

from jaxbigram import config, data, models, sweep, sweep_export, sweep_members, sweep_report, sweep_shapes, train
from jaxbigram.checkpoint import Store
from jaxbigram.errors import UsageError
from conftest import TINY, same_tree

GPT_TINY = TINY.replace("tiny.toml", "gpt-tiny.toml")
# a traced hyperparameter rounds differently from a Python constant (e.g. 1 - b1 in float32): members equal their
# single runs to float rounding, amplified a little by Adam over the steps
RTOL = {"bigram": 1e-4, "gpt": 1e-2}  # gpt: ~3 Adam steps of lr 3e-3 on a near-zero gradient


def fit_alone(cfg, corpus, workdir):
    store = Store(workdir)
    try:
        return train.fit(cfg, corpus, store, out=io.StringIO(), err=io.StringIO())
    finally:
        store.close()


@pytest.mark.parametrize("preset, sets", [(TINY, ["train.learning_rate=[0.02,0.05]"]),
                                          (GPT_TINY, ["train.steps=40", "train.weight_decay=[0.0,0.1]",
                                                      "eval.interval=20", "checkpoint.interval=20"])])
def test_member_equals_its_single_run(preset, sets, corpus, tmp_path):
    plan = sweep.make_plan(preset, sets, seeds=2)
    result = sweep.run_sweep(tmp_path / "sweep", plan, err=io.StringIO(), plot=False)
    k = 3  # the second setting, second seed
    cfg = plan.members[k]
    assert cfg.train.seed == plan.settings[1].train.seed + 1
    alone = fit_alone(cfg, corpus, tmp_path / "alone")
    kind = alone.report["model"]
    for a, b in zip(jax.tree.leaves(sweep.member(result.states.params, k)), jax.tree.leaves(alone.state.params)):
        np.testing.assert_allclose(a, b, rtol=RTOL[kind], atol=RTOL[kind])
    np.testing.assert_allclose(result.val[k], alone.report["val_loss"], rtol=RTOL[kind] / 10)


def test_make_train_equals_fit_bit_for_bit_with_the_configs_constants(corpus, tmp_path):
    cfg = config.load(TINY)
    train_ids, _ = data.split(corpus.ids, cfg.data.val_fraction)
    model = models.build(cfg.model, corpus.tokenizer.vocab_size, cfg.train.block_size)
    state, losses = jax.jit(train.make_train(cfg, model, train_ids))(jax.random.key(cfg.train.seed))
    assert losses.shape == (cfg.train.steps,)
    assert same_tree(state.params, fit_alone(cfg, corpus, tmp_path).state.params)


def test_a_resumed_sweep_equals_an_uninterrupted_one(tmp_path):
    sets = ["train.learning_rate=[0.02,0.05]"]
    whole = sweep.run_sweep(tmp_path / "a", sweep.make_plan(TINY, sets + ["train.steps=200"], 2), err=io.StringIO(),
                            plot=False)
    sweep.run_sweep(tmp_path / "b", sweep.make_plan(TINY, sets + ["train.steps=100"], 2), err=io.StringIO(),
                    plot=False)
    resumed = sweep.run_sweep(tmp_path / "b", sweep.make_plan(TINY, sets + ["train.steps=200"], 2),
                              err=io.StringIO(), plot=True)
    assert same_tree(whole.states.params, resumed.states.params)
    assert same_tree(whole.states.opt_state, resumed.states.opt_state)
    assert resumed.history == whole.history and resumed.plot.is_file()
    with pytest.raises(UsageError, match="other settings"):
        sweep.run_sweep(tmp_path / "b", sweep.make_plan(TINY, ["train.learning_rate=[0.02,0.07]"], 2),
                        err=io.StringIO(), plot=False)
    out = sweep_export.export_member(tmp_path / "b", 3, tmp_path / "member3")
    params, meta = Store(out, read_only=True).restore_params(200)
    assert same_tree(params, sweep.member(resumed.states.params, 3))
    assert meta["config"]["train"]["learning_rate"] == 0.05 and meta["config"]["train"]["seed"] == 1338


def test_summary_marks_the_best_setting_and_keys_that_change_shapes_are_refused():
    plan = sweep.make_plan(TINY, ["train.learning_rate=[0.1,0.2]"], seeds=2)
    rows = sweep_report.summarize(plan, np.array([2.0, 2.2, 1.9, 1.9]), None)
    assert [r["best"] for r in rows] == [False, True] and rows[0]["val_max"] == 2.2
    assert rows[1]["val_std"] == 0.0 and "*" in sweep_report.format_table(rows)
    diverged = sweep_report.summarize(plan, np.full(4, np.nan), None)  # every member diverged: no best setting
    assert not any(r["best"] for r in diverged) and "*" not in sweep_report.format_table(diverged).splitlines()[1]
    with pytest.raises(UsageError, match="differ in model.dropout"):  # within a shape: one program
        sweep.make_plan(TINY, ["model.dropout=[0.0,0.1]"], seeds=1)
    with pytest.raises(UsageError, match="grad_clip"):
        sweep.make_plan(TINY, ["train.grad_clip=[0,1]"], seeds=1)


def test_members_are_split_over_the_devices_that_divide_them():
    devices = ["cpu0", "cpu1", "cpu2", "cpu3"]
    assert sweep_members.member_devices(8, 0, devices) == devices
    assert sweep_members.member_devices(6, 0, devices) == devices[:3]  # the most devices that divide the members evenly
    assert sweep_members.member_devices(7, 0, devices) == devices[:1]
    assert sweep_members.member_devices(6, 2, devices) == devices[:2]
    with pytest.raises(UsageError, match="does not divide the sweep's 6 members"):
        sweep_members.member_devices(6, 4, devices)
    with pytest.raises(UsageError, match="devices"):
        sweep_members.member_devices(8, 5, devices)


def test_cli_sweep_prints_the_table_and_two_devices_train_the_same_members(run_cli, cli_run, tmp_path):
    """The CLI has two CPU devices: each trains half of the members (the in-process run here has one device)."""
    import json

    sets = ["--set", "train.learning_rate=[0.02,0.05]"]
    proc = run_cli("sweep", "--config", TINY, "--seeds", "2", *sets, "--workdir", tmp_path / "s", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "2 on each of 2 cpu devices" in proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["settings"]) == 2 and len(report["val_loss"]) == 4
    one_device = sweep.run_sweep(tmp_path / "one", sweep.make_plan(TINY, sets[1:], 2), err=io.StringIO(), plot=False)
    assert report["val_loss"] == one_device.val.tolist()  # the bigram's math is elementwise: bit for bit
    gpt_sets = ["train.steps=20", "eval.interval=20", "checkpoint.interval=20"]
    proc = run_cli("sweep", "--config", GPT_TINY, "--seeds", "2", *[a for s in gpt_sets for a in ("--set", s)],
                   "--workdir", tmp_path / "g", "--json")
    assert proc.returncode == 0, proc.stderr
    one_device = sweep.run_sweep(tmp_path / "g1", sweep.make_plan(GPT_TINY, gpt_sets, 2), err=io.StringIO(),
                                 plot=False)
    np.testing.assert_allclose(json.loads(proc.stdout)["val_loss"], one_device.val, rtol=1e-5)
    bad = cli_run("sweep", "--config", TINY, "--set", "model.dropout=[0.0,0.1]", "--workdir", tmp_path / "t")
    assert bad.returncode == 2 and bad.stderr.count("error: ") == 1 and "model.dropout" in bad.stderr


def test_a_sweep_too_big_for_memory_is_one_line_naming_how_many_members_fit(monkeypatch, tmp_path):
    from jaxbigram import memory
    from jaxbigram.errors import ResourceError

    plan = sweep.make_plan(TINY, [], seeds=1000)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device=None: 200 * 2**20)
    with pytest.raises(ResourceError, match=r"sweep's 1000 members need about .* sweep at most \d+ members") as e:
        sweep.run_sweep(tmp_path / "s", plan, err=io.StringIO(), plot=False)
    fits = int(str(e.value).split("at most ")[1].split()[0])
    # the number it names is the real limit: that many members pass the check, one more does not
    corpus = data.load_corpus(str(data.resolve_data_path(None)[0]))
    cfg = plan.settings[0]
    model = models.build(cfg.model, corpus.tokenizer.vocab_size, cfg.train.block_size)
    train.check_memory(cfg, corpus, model, members=fits)
    with pytest.raises(ResourceError, match=f"sweep's {fits + 1} members"):
        train.check_memory(cfg, corpus, model, members=fits + 1)
    assert not (tmp_path / "s" / "checkpoints").exists() or not any((tmp_path / "s" / "checkpoints").iterdir())



def test_kill9_mid_sweep_then_the_same_command_resumes_bit_identical(run_cli, tmp_path, data_path):
    """SIGKILL once the sweep has evaluated at step 200 (mid-save or mid-chunk), then the same command: the final
    members equal an uninterrupted sweep's bit for bit (the bigram's member math is elementwise)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT

    sets = ["train.learning_rate=[0.02,0.05]", "train.steps=400", "eval.interval=100", "checkpoint.interval=100"]
    argv = [sys.executable, str(REPO_ROOT / "run.py"), "sweep", "--config", TINY, "--seeds", "2", "--workdir",
            str(tmp_path / "k"), *[a for s in sets for a in ("--set", s)]]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXBIGRAM_DATA=str(data_path))
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if line.startswith("step 200:"):
            time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    resumed = run_cli(*argv[2:], "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming the sweep from step" in resumed.stderr
    whole = sweep.run_sweep(tmp_path / "w", sweep.make_plan(TINY, sets, 2), err=io.StringIO(), plot=False)
    params, _ = Store(tmp_path / "k", read_only=True).restore_params(400)
    assert same_tree(params, whole.states.params)


@pytest.mark.parametrize("table, expected", [
    ('seeds = "x"', "whole number from 1 to"), ("seeds = -1", "whole number"), ("seeds = 0", "whole number"),
    ("seeds = 1e9", "whole number"), ("seeds = true", "got True"), ("seeds = 99999999999999999999", "whole number"),
    ('"train.learning_rate" = "notalist"', "is not a list"), ('"train.learning_rate" = []', "has no value"),
    ('"bad" = [1, 2]', "a swept key is section.key"), ('"train.foo" = [1, 2]', "unknown config key train.foo"),
    ('"train.learning_rate" = [-1, 0.1]', "must be > 0"), ('"train.learning_rate" = [0.1, "a"]', "must be a number"),
    ('"model.dropout" = [0.0, 0.1]', "differ in model.dropout"),
    ('"train.learning_rate" = [1,2,3,4,5,6,7,8,9,10]\nseeds = 1048576', "members, more than 1,048,576"),
])
def test_a_bad_sweep_table_is_one_usage_error(table, expected, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f"[sweep]\n{table}\n")
    with pytest.raises(UsageError, match=expected):
        sweep.make_plan(str(path), [], None)


def test_a_sweep_that_is_not_a_table_is_one_usage_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("sweep = 3\n")
    with pytest.raises(UsageError, match=r"\[sweep\] must be a table"):
        sweep.make_plan(str(path), [], None)
    with pytest.raises(UsageError, match="got 0"):
        sweep.make_plan(TINY, [], 0)


@pytest.fixture(scope="module")
def sweep_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep") / "s"
    sweep.run_sweep(workdir, sweep.make_plan(TINY, ["train.steps=100"], 2), err=io.StringIO(), plot=False)
    return workdir


@pytest.mark.parametrize("command", [["sample"], ["eval"], ["plot"], ["plot", "--attention"], ["train"],
                                     ["train", "--steps", "300"]])
def test_a_command_about_one_run_on_a_sweep_folder_is_one_line_and_touches_nothing(command, sweep_workdir,
                                                                                   capsys):
    """Once, ``train`` here set the sweep's checkpoints aside as damaged and trained over them."""
    from conftest import run_main, snapshot

    before = snapshot(sweep_workdir)
    line = run_main(capsys, [*command, "--workdir", sweep_workdir])
    assert "are a sweep of 2 runs, not one run" in line and "--export K --out DIR" in line
    assert snapshot(sweep_workdir) == before


def test_info_on_a_sweep_folder_names_its_members(sweep_workdir, capsys):
    from jaxbigram.cli import main

    assert main(["info", "--workdir", str(sweep_workdir)]) == 0
    assert "sweep:       2 members = 1 setting(s) × 2 seed(s): base" in capsys.readouterr().out


# ----------------------------------------------------------------------------- shape sweeps

SHAPES = ["train.batch_size=[4,8]", "train.steps=20", "eval.interval=10", "checkpoint.interval=10"]


def test_a_shape_sweep_trains_each_shape_as_a_sweep_whose_members_equal_their_runs(tmp_path, corpus, capsys):
    """Two batch sizes of the bigram: two groups under groups/, members numbered group by group, member 3 (second
    shape, second seed) equals its single run; a resume (10 then 20 steps) equals 20 in one go, bit for bit; info
    lists the shapes, --export K writes member K, a single-run command on the folder is one line."""
    from jaxbigram.cli import main
    from conftest import run_main, snapshot

    plan = sweep.make_plan(TINY, SHAPES, seeds=2)
    assert [label for label, _ in sweep.group_plans(plan)] == ["train.batch_size=4", "train.batch_size=8"]
    whole = sweep.run_sweep(tmp_path / "w", plan, err=io.StringIO(), plot=True)
    assert [p.name for p in sweep_shapes.shape_groups(tmp_path / "w")] == ["0-train.batch_size=4",
                                                                           "1-train.batch_size=8"]
    assert [r["members"] for r in whole.rows] == [[0, 1], [2, 3]] and whole.plot.is_file()
    alone = fit_alone(whole.plan.members[3], corpus, tmp_path / "alone")
    assert alone.state.params is not None and whole.plan.members[3].train.batch_size == 8
    for a, b in zip(jax.tree.leaves(sweep.member(whole.groups[1].states.params, 1)),
                    jax.tree.leaves(alone.state.params)):
        np.testing.assert_allclose(a, b, rtol=RTOL["bigram"], atol=RTOL["bigram"])
    np.testing.assert_allclose(whole.val[3], alone.report["val_loss"], rtol=1e-5)
    sweep.run_sweep(tmp_path / "r", sweep.make_plan(TINY, SHAPES + ["train.steps=10"], 2), err=io.StringIO(),
                    plot=False)
    resumed = sweep.run_sweep(tmp_path / "r", plan, err=io.StringIO(), plot=False)
    for a, b in zip(resumed.groups, whole.groups):
        assert same_tree(a.states, b.states) and a.history == b.history
    assert resumed.history == whole.history and resumed.val.tolist() == whole.val.tolist()
    assert main(["info", "--workdir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "shape sweep: 4 members in 2 shapes" in out and "members 2 to 3" in out
    folder = sweep_export.export_member(tmp_path / "w", 3, tmp_path / "m3")
    params, meta = Store(folder, read_only=True).restore_params(20)
    assert same_tree(params, sweep.member(whole.groups[1].states.params, 1))
    assert meta["config"]["train"]["batch_size"] == 8 and meta["config"]["train"]["seed"] == 1338
    before = snapshot(tmp_path / "w")
    for argv in (["train"], ["sweep", "--config", TINY], ["sweep", "--config", TINY, "--set", "train.batch_size=[4,16]"],
                 ["sweep", "--export", "4", "--out", tmp_path / "m4"]):
        line = run_main(capsys, [*argv, "--workdir", tmp_path / "w"])
        assert "shape sweep" in line or "members are 0 to 3" in line, line
    assert snapshot(tmp_path / "w") == before


def test_a_shape_sweeps_plot_draws_val_loss_against_size_and_compute_with_the_fit(tmp_path):
    """A GPT's three sizes (rows as a shape sweep gives them, its losses made up: nothing trains): below the table
    panel, exact val loss (mean over seeds, bars min to max) against non-embedding N and against training FLOPs,
    log–log, the fit drawn on N; a one-size table gets no such panels."""
    from jaxbigram import compute

    plan = sweep.make_plan(GPT_TINY, ["model.n_embd=[16,32,64]"], seeds=2)
    val = np.array([2.6, 2.5, 2.3, 2.25, 2.1, 2.16])
    history = [{"step": s, "train_loss": list(val + d), "val_loss": list(val + d)}
               for s, d in ((0, 2.0), (20, 0.0))]
    rows = sweep_report.summarize(plan, val, None)
    for row, cfg in zip(rows, plan.settings):
        row.update(compute.compute_of(models.build(cfg.model, 65, cfg.train.block_size), 20, 8, 16))
    n = np.array([r["params_non_embedding"] for r in rows], np.float64)
    pairs = val.reshape(3, 2)
    fit = {**compute.fit_power_law(n, pairs.mean(axis=1)), "params": n.tolist()}  # scaling_fit's, less its bootstrap
    points = sweep_report.scaling_points(rows)
    assert points["params"].tolist() == n.tolist() and len(set(n)) == 3
    np.testing.assert_allclose(points["mean"], pairs.mean(axis=1))
    np.testing.assert_allclose([points["low"], points["high"]], [pairs.min(axis=1), pairs.max(axis=1)])
    fig = sweep_report.sweep_figure(plan, history, rows, fit)
    by_params, by_compute = fig.axes[2:]
    assert len(fig.axes) == 4 and "non-embedding" in by_params.get_xlabel() and "FLOPs" in by_compute.get_xlabel()
    for ax, x in ((by_params, n), (by_compute, [r["flops"] for r in rows])):
        assert ax.get_xscale() == ax.get_yscale() == "log"
        assert any(line.get_xdata().tolist() == list(x) and np.allclose(line.get_ydata(), pairs.mean(axis=1))
                   for line in ax.get_lines())  # the points, one per size
    curve = next(line for line in by_params.get_lines() if len(line.get_xdata()) == 100)
    assert curve.get_xdata()[0] == n.min() and curve.get_xdata()[-1] == pytest.approx(n.max())
    np.testing.assert_allclose(curve.get_ydata(), fit["E"] + fit["A"] * curve.get_xdata() ** -fit["alpha"])
    assert sweep_report.scaling_points(rows[:1]) is None and len(sweep_report.sweep_figure(plan, history).axes) == 1
    path = sweep_report.plot_sweep(plan, history, tmp_path / "sweep.png", rows, fit)
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[16:24] == (1200).to_bytes(4, "big") + (1000).to_bytes(4, "big")


@pytest.mark.parametrize("sets, expected", [
    (["model.kind='gpt'", "model.n_head=[3]", "model.n_embd=[64]"], "divisible by model.n_head = 3"),
    (["model.kind='gpt'", "model.n_embd=[0,32]"], "model.n_embd must be"),
    (["train.batch_size=[8,8]"], "lists 8 twice"),
    (["train.block_size=[4,8,4]"], "lists 4 twice"),
    (["train.batch_size=[8,12]", "train.grad_accum=8"], "does not divide train.batch_size = 12"),
    (["train.grad_accum=[0,2]"], "train.grad_accum must be"),
    (["train.block_size=[8,2147483647]"], "multiply to"),
    (["model.kind='gpt'", "model.n_embd=[16,1048576]", "model.n_head=2"], "memory"),
])
def test_a_hostile_shape_list_is_one_line_and_touches_nothing(sets, expected, tmp_path, capsys):
    from conftest import run_main

    argv = ["sweep", "--config", TINY, "--workdir", tmp_path / "s"] + [a for s in sets for a in ("--set", s)]
    assert expected in run_main(capsys, argv)
    assert not (tmp_path / "s").exists()


def test_kill9_mid_shape_then_the_same_command_resumes_bit_identical(run_cli, tmp_path, data_path):
    """SIGKILL once the second shape has evaluated at step 10, then the same command: every group equals an
    uninterrupted shape sweep's, bit for bit."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO_ROOT

    sets = SHAPES + ["train.steps=30"]
    argv = [sys.executable, str(REPO_ROOT / "run.py"), "sweep", "--config", TINY, "--seeds", "2", "--workdir",
            str(tmp_path / "k"), *[a for s in sets for a in ("--set", s)]]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXBIGRAM_DATA=str(data_path))
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    second = False
    for line in proc.stderr:
        second = second or line.startswith("shape 2/2")
        if second and line.startswith("step 10:"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    resumed = run_cli(*argv[2:], "--json")
    assert resumed.returncode == 0, resumed.stderr
    whole = sweep.run_sweep(tmp_path / "w", sweep.make_plan(TINY, sets, 2), err=io.StringIO(), plot=False)
    for folder, group in zip(sweep_shapes.shape_groups(tmp_path / "k"), whole.groups):
        params, _ = Store(folder, read_only=True).restore_params(30)
        assert same_tree(params, group.states.params)


# ----------------------------------------------------------------------------- --budget (iso-FLOP)

BUDGET_SHAPES = ["model.n_embd=[8,16]", "train.steps_per_call=10", "eval.iters=1", "eval.sample_chars=0"]


@pytest.mark.parametrize("flags, expected", [
    (["--budget", "0"], "positive, finite number of FLOPs"),
    (["--budget=-1e12"], "got '-1e12'"),  # argparse reads a bare -1e12 as a flag
    (["--budget", "nan"], "got 'nan'"),
    (["--budget", "inf"], "got 'inf'"),
    (["--budget", "1e400"], "got '1e400'"),
    (["--budget", "lots"], "got 'lots'"),
    (["--budget", "1e12", "--steps", "10"], "--budget and --steps both set the steps"),
    (["--budget", "1e12", "--set", "train.steps=10"], "--budget and --set train.steps=10 both set the steps"),
    (["--budget", "1e3"], "less than one chunk of model.n_embd=16"),
    (["--budget", "1e12", "--export", "0", "--out", "x"], ", --budget (give those when training"),
])
def test_a_hostile_budget_is_one_line_and_touches_nothing(flags, expected, cli_run, tmp_path):
    from conftest import error_line

    sets = [a for s in BUDGET_SHAPES for a in ("--set", s)]
    proc = cli_run("sweep", "--config", GPT_TINY, "--workdir", tmp_path / "b", *sets, *flags, cwd=tmp_path)
    assert proc.returncode == 2 and expected in error_line(proc.stderr), proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == []  # no workdir, no --out


def test_a_budget_sweep_gives_each_size_its_steps_and_names_the_best(cli_run, tmp_path):
    """gpt-tiny at widths 8 and 16, 10 steps a chunk: each width trains the whole chunks nearest the budget (by hand,
    6·N + 6·n_layer·T·C FLOPs a token, 8 × 16 tokens a step), the table shows them, the named best size is the
    argmin of the printed losses; the same command resumes (--json: the budget keys), another budget is refused."""
    from conftest import error_line, snapshot

    budget, vocab = 6.5e7, 65
    chunks = []
    for c in (8, 16):
        model = models.build(config.load(GPT_TINY, [f"model.n_embd={c}"]).model, vocab, 16)
        n = model.param_count() - (vocab + 16) * c
        chunks.append(int(np.floor(budget / ((6 * n + 6 * 2 * 16 * c) * 8 * 16 * 10) + 0.5)))
    assert min(chunks) >= 1 and max(chunks) <= 3 and chunks[0] != chunks[1]
    argv = ["sweep", "--config", GPT_TINY, "--workdir", tmp_path / "w", "--budget", "6.5e7",
            *[a for s in BUDGET_SHAPES for a in ("--set", s)]]
    proc = cli_run(*argv)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows = [line for line in lines if "model.n_embd=" in line and "±" in line]
    assert [int(r.split()[-1]) for r in rows] == [10 * k for k in chunks]  # the steps column
    val = [float(r.split("±")[0].split()[-1]) for r in rows]
    best = next(line for line in lines if line.startswith("best for budget 6.5e+07 FLOPs: "))
    assert f"model.n_embd={(8, 16)[int(np.argmin(val))]} (" in best and f"val {min(val):.4f}" in best
    for c, k in zip((8, 16), chunks):
        assert any(line.startswith(f"  model.n_embd={c}: {k} chunk(s) of 10 = {10 * k} steps") for line in lines)
    again = cli_run(*argv, "--json")
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert [r["steps"] for r in out["settings"]] == [10 * k for k in chunks] and out["budget"]["flops"] == budget
    assert [s["chunks"] for s in out["budget"]["sizes"]] == chunks
    assert out["budget"]["best"]["shape"] == best.split(": ")[1].split(" (")[0]
    before = snapshot(tmp_path / "w")
    for other in (["--budget", "1e8"], []):
        refused = cli_run(*[a for a in argv if a not in ("--budget", "6.5e7")], *other)
        assert refused.returncode == 2 and "a sweep with --budget 6.5e+07 FLOPs" in error_line(refused.stderr)
    assert snapshot(tmp_path / "w") == before
