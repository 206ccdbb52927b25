"""Command line: ``train``, ``sample``, ``eval``, ``info``, ``plot``, ``bench``. Parses flags, prints, maps user errors
to exit code 2 (and signals to 128 + N)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .errors import MESSAGES, UsageError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.toml"
DEFAULT_WORKDIR = "runs/default"
PLATFORMS = {"cpu": ["cpu"], "gpu": ["cuda", "rocm"], "tpu": ["tpu"]}  # --platform → JAX backends to try, in order


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default, unless its help already says it or there is none to show (None, False, [])."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == []:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as one ``error: …`` line and exit code 2."""

    def error(self, message):
        raise UsageError("cli_usage", prog=self.prog, message=message)


def _epilog(*examples: str) -> str:
    return "example:\n" + "\n".join(f"  {e}" for e in examples)


def _non_negative_int(flag: str, low: int = 0):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UsageError("cli_usage", prog=flag, message=f"expected an integer, got {text!r}") from None
        if value < low:
            raise UsageError("negative", flag=flag, low=low, got=value)
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="run.py", description="jaxbigram: the character-level bigram language model in JAX/Flax.",
                     formatter_class=_Formatter, epilog=_epilog("python run.py train", "python run.py sample --seed 1337"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,eval,info,plot,bench}",
                                parser_class=_Parser)

    p = sub.add_parser("train", help="train (or resume) a model", formatter_class=_Formatter,
                       description="Train the bigram model; resumes from the latest checkpoint in --workdir.",
                       epilog=_epilog("python run.py train --config configs/lecture.toml --workdir runs/lecture"))
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="TOML config file")
    p.add_argument("--data", default=None, help="UTF-8 text file (default: $JAXBIGRAM_DATA, else tinyshakespeare)")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where checkpoints and logs go")
    p.add_argument("--steps", type=_non_negative_int("--steps", 1), default=None, help="override train.steps (default: from the config)")
    p.add_argument("--seed", type=_non_negative_int("--seed"), default=None, help="override train.seed (default: from the config)")
    p.add_argument("--fresh", action="store_true", help="delete this workdir's checkpoints and start over")
    p.add_argument("--platform", default=None, help="cpu, gpu or tpu (default: JAX's choice)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set train.learning_rate=0.01")
    p.add_argument("--distributed", action="store_true",
                   help="multi-process run over several hosts: jax.distributed.initialize, with the cluster "
                        "(SLURM, Open MPI, TPU pod slice, Kubernetes) auto-detected unless the flags below are given")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's address; implies --distributed (unset: $JAX_COORDINATOR_ADDRESS or detected)")
    p.add_argument("--num-processes", type=_non_negative_int("--num-processes", 1), default=None, metavar="N",
                   help="number of processes; implies --distributed (unset: detected)")
    p.add_argument("--process-id", type=_non_negative_int("--process-id"), default=None, metavar="I",
                   help="this process's index, 0 to N-1; implies --distributed (unset: detected)")

    p = sub.add_parser("sample", help="generate text from a checkpoint", formatter_class=_Formatter,
                       description="Generate text from a trained checkpoint; prints only the text on stdout.",
                       epilog=_epilog("python run.py sample --seed 1337 --prompt 'ROMEO:' --max-new-tokens 200"))
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="the training run's workdir")
    p.add_argument("--seed", type=_non_negative_int("--seed"), default=1337, help="sampling seed")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=None, help="text to continue (default: the first vocabulary character, '\\n')")
    prompt.add_argument("--prompt-file", default=None, metavar="FILE", help="continue the UTF-8 text of FILE (as is)")
    p.add_argument("--max-new-tokens", type=_non_negative_int("--max-new-tokens"), default=500,
                   help="characters to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (> 0)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely characters (default: off)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set reaching probability p (default: off)")
    p.add_argument("--num-samples", type=_non_negative_int("--num-samples"), default=1, help="independent samples")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--platform", default=None, help="cpu, gpu or tpu (default: JAX's choice)")

    p = sub.add_parser("eval", help="exact train/val loss of a checkpoint", formatter_class=_Formatter,
                       description="Exact loss over the whole train and val splits, bits/char, and the closed-form "
                                   "bigram optimum.", epilog=_epilog("python run.py eval --json"))
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="the training run's workdir")
    p.add_argument("--data", default=None, help="text file (default: the one the checkpoint was trained on)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--platform", default=None, help="cpu, gpu or tpu (default: JAX's choice)")

    p = sub.add_parser("info", help="describe a run's checkpoints", formatter_class=_Formatter,
                       description="Checkpoint steps, best val loss, config, vocabulary and data source of a run.",
                       epilog=_epilog("python run.py info --workdir runs/default"))
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="the training run's workdir")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = sub.add_parser("plot", help="draw loss curves and the learned bigram as PNGs", formatter_class=_Formatter,
                       description="Write loss.png (train/val loss by step, closed-form optimum dashed) and bigram.png "
                                   "(the V×V table of next-character probabilities). Needs the [plot] extra.",
                       epilog=_epilog("python run.py plot --workdir runs/default --out docs"))
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="the training run's workdir")
    p.add_argument("--out", default=None, help="directory for the PNGs (default: the workdir)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step for the bigram table (default: latest)")

    p = sub.add_parser("bench", help="measure training, sampling and data-prep speed", formatter_class=_Formatter,
                       description="Benchmark this machine: fused training (steps/s, tokens/s, compile time) next to a "
                                   "naive jit-per-step loop, the whole configs/notes.toml run, sampling chars/s, data "
                                   "prep MB/s and peak memory (medians of repeats, after warm-up; see README).",
                       epilog=_epilog("python run.py bench --quick", "python run.py bench --json > bench.json"))
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="fewer repeats and a 20 MB corpus (about half the time)")
    p.add_argument("--data", default=None, help="text to train on (default: $JAXBIGRAM_DATA, else tinyshakespeare)")
    p.add_argument("--platform", default=None, help="cpu, gpu or tpu (default: JAX's choice)")
    return parser


# ----------------------------------------------------------------------------- helpers at the edge

def select_platform(name: str | None) -> None:
    """Pin JAX to ``name`` before any computation; print the backend and devices on stderr.

    ``gpu`` tries JAX's ``cuda`` backend, then ``rocm``: JAX fails loudly on any platform named in ``jax_platforms``
    that does not start, so naming both at once would fail on a machine with only one kind.
    """
    import jax

    if name is not None and name not in PLATFORMS:
        raise UsageError("platform_unknown", got=name)
    errors = []
    for backend in PLATFORMS[name] if name is not None else [None]:
        if backend is not None:
            jax.config.update("jax_platforms", backend)
        try:
            devices = jax.devices()
            break
        except (RuntimeError, AssertionError) as e:  # JAX asserts when a named platform has no device at all
            errors.append(str(e).splitlines()[0] if str(e) else f"no {backend} device found")
    else:
        raise UsageError("platform_unavailable", got=name, reason=errors[0])
    print(f"jax {jax.__version__}: backend {jax.default_backend()}, devices {devices}", file=sys.stderr)


def _open_store(workdir: str):
    from .checkpoint import Store

    return Store(workdir, create=False)


def _load_checkpoint(workdir: str, step: int | None):
    from .data import Tokenizer

    store = _open_store(workdir)
    step = store.resolve_step(step)
    params, meta = store.restore_params(step)
    return step, params, meta, Tokenizer(meta["vocab"])


def _encode_prompt(tokenizer, text: str):
    from .data import UnknownCharacters

    if text == "":
        raise UsageError("prompt_empty")
    try:
        return tokenizer.encode(text)
    except UnknownCharacters as e:
        raise UsageError("prompt_unknown", chars=", ".join(repr(c) for c in e.chars)) from None


def _read_prompt_file(path: str) -> str:
    """The whole UTF-8 text of ``path``, as is; a clear error if it cannot be read."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise UsageError("prompt_file", path=path, reason=e.strerror or type(e).__name__) from None
    except UnicodeDecodeError as e:
        raise UsageError("prompt_file", path=path, reason=f"not UTF-8: invalid byte at offset {e.start}") from None


def _print_report(report: dict, out) -> None:
    print(f"exact loss at step {report['step']}: train {report['train_loss']:.4f} nats "
          f"({report['train_bpc']:.4f} bits/char), val {report['val_loss']:.4f} nats ({report['val_bpc']:.4f} bits/char)",
          file=out)
    print(f"closed-form bigram optimum: train {report['optimum_train_loss']:.4f} (count model), "
          f"val {report['optimum_val_loss']:.4f} (add-one smoothed count model); "
          f"gap: train {report['gap_train']:+.4f}, val {report['gap_val']:+.4f}", file=out)


# ----------------------------------------------------------------------------- subcommands

def cmd_train(args) -> int:
    from . import config as config_lib
    from .checkpoint import Store
    from .data import DATA_ENV, load_corpus, resolve_data_path
    from .train import fit

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    cfg = config_lib.load(args.config, overrides)
    if args.distributed or any(v is not None for v in (args.coordinator, args.num_processes, args.process_id)):
        # before any JAX computation; only process 0 prints from here on
        from .parallel import initialize_distributed, silence_non_primary

        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        silence_non_primary()
    select_platform(args.platform)
    store = Store(args.workdir, keep=cfg.checkpoint.keep)
    started = time.perf_counter()
    # --data, else $JAXBIGRAM_DATA, else the config's data.path, else tinyshakespeare (cached or downloaded)
    corpus = load_corpus(resolve_data_path(args.data or os.environ.get(DATA_ENV) or cfg.data.path or None))
    print(f"data: {corpus.path} ({len(corpus.ids):,} characters, vocab {corpus.tokenizer.vocab_size}, "
          f"sha256 {corpus.sha256[:12]}…)", file=sys.stderr)
    try:
        with store.exclusive():
            result = fit(cfg, corpus, store, fresh=args.fresh, out=sys.stdout, err=sys.stderr)
    finally:
        store.close()
    seconds = time.perf_counter() - started
    print(f"trained to step {result.report['step']} in {seconds:.1f} s ({result.steps_per_second:,.0f} steps/s)")
    _print_report(result.report, sys.stdout)
    print(f"checkpoints: {store.directory}  (next: python run.py sample --workdir {args.workdir})", file=sys.stderr)
    return 0


def cmd_sample(args) -> int:
    import jax

    from .generate import generate_stream

    if args.temperature <= 0:
        raise UsageError("temperature", got=args.temperature)
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError("top_p", got=args.top_p)
    if args.prompt_file is not None:
        args.prompt = _read_prompt_file(args.prompt_file)
    select_platform(args.platform)
    step, params, meta, tokenizer = _load_checkpoint(args.workdir, args.step)
    if args.top_k is not None and not 1 <= args.top_k <= tokenizer.vocab_size:
        raise UsageError("top_k", vocab=tokenizer.vocab_size, got=args.top_k)
    prompt_ids = [0] if args.prompt is None else _encode_prompt(tokenizer, args.prompt)
    print(f"sampling from step {step} of {args.workdir}", file=sys.stderr)
    base_key = jax.random.key(args.seed)
    out = sys.stdout
    for i in range(args.num_samples):
        if args.num_samples > 1:
            out.write(("" if i == 0 else "\n") + f"---------- sample {i + 1} of {args.num_samples} ----------\n")
        out.write(tokenizer.decode(prompt_ids))
        key = jax.random.fold_in(base_key, i)
        for chunk in generate_stream(params, key, prompt_ids, args.max_new_tokens, args.temperature,
                                     args.top_k or 0, args.top_p or 1.0):
            out.write(tokenizer.decode(chunk[0]))
            out.flush()
        out.write("\n")
    out.flush()
    return 0


def evaluate_checkpoint(workdir: str, step: int | None, data_path: str | None) -> dict:
    """Exact losses of a checkpoint on its data (or ``data_path``), with the optimum and the gap."""
    from .data import UnknownCharacters, bigram_counts, decode_utf8, load_corpus, read_bytes, split
    from .train import exact_report

    step, params, meta, tokenizer = _load_checkpoint(workdir, step)
    path = data_path or os.environ.get("JAXBIGRAM_DATA") or meta["data"]["path"]
    corpus = load_corpus(Path(path))
    if corpus.tokenizer.chars == tokenizer.chars:
        ids = corpus.ids
    else:  # another text: encode it with the checkpoint's vocabulary
        try:
            ids = tokenizer.encode(decode_utf8(read_bytes(Path(path)), Path(path)))
        except UnknownCharacters as e:
            raise UsageError("eval_unknown_chars", path=path, n=len(e.chars),
                             chars=", ".join(repr(c) for c in e.chars[:20])) from None
    train_ids, val_ids = split(ids, meta["config"]["data"]["val_fraction"])
    report = exact_report(params, bigram_counts(train_ids, tokenizer.vocab_size),
                          bigram_counts(val_ids, tokenizer.vocab_size))
    report.update(step=step, data=str(path), sha256=corpus.sha256,
                  same_data_as_training=corpus.sha256 == meta["data"]["sha256"])
    return report


def cmd_eval(args) -> int:
    select_platform(args.platform)
    report = evaluate_checkpoint(args.workdir, args.step, args.data)
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report, sys.stdout)
    return 0


def run_info(workdir: str) -> dict:
    """Everything a user wants to know about a run, from its checkpoints alone."""
    store = _open_store(workdir)
    steps = store.steps()
    if not steps:
        raise UsageError("no_checkpoint", workdir=store.workdir)
    metas = {s: store.read_meta(s) for s in steps}
    latest = metas[steps[-1]]
    scored = [(m["last_eval"]["val_loss"], s) for s, m in metas.items() if m.get("last_eval")]
    best_loss, best_step = min(scored) if scored else (None, None)
    return {"workdir": str(store.workdir), "steps": steps, "latest_step": steps[-1], "best_val_loss": best_loss,
            "best_step": best_step, "vocab_size": latest["vocab_size"], "vocab": latest["vocab"],
            "data": latest["data"], "config": latest["config"], "exact": latest.get("exact"),
            "metrics": _metrics_summary(store.workdir)}


def _metrics_summary(workdir) -> dict | None:
    """Evals logged in ``metrics.jsonl`` and the best val estimate among them (any step, checkpointed or not)."""
    from .progress import METRICS_FILE, read_metrics

    rows = read_metrics(Path(workdir) / METRICS_FILE)
    if not rows:
        return None
    best = min(rows, key=lambda r: r["val_loss"])
    return {"path": str(Path(workdir) / METRICS_FILE), "evals": len(rows), "last_step": rows[-1]["step"],
            "best_val_loss": best["val_loss"], "best_step": best["step"]}


def cmd_info(args) -> int:
    info = run_info(args.workdir)
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return 0
    print(f"workdir:     {info['workdir']}")
    print(f"checkpoints: steps {', '.join(map(str, info['steps']))} (latest {info['latest_step']})")
    if info["best_step"] is not None:
        print(f"best:        val loss {info['best_val_loss']:.4f} (estimate) at step {info['best_step']}")
    if info["metrics"]:
        m = info["metrics"]
        print(f"metrics:     {m['evals']} evals up to step {m['last_step']} in {m['path']}; best val loss "
              f"{m['best_val_loss']:.4f} (estimate) at step {m['best_step']}")
    if info["exact"]:
        print(f"exact:       val loss {info['exact']['val_loss']:.4f} nats at step {info['exact']['step']}, "
              f"optimum {info['exact']['optimum_val_loss']:.4f}")
    print(f"vocab:       {info['vocab_size']} characters: {info['vocab']!r}")
    print(f"data:        {info['data']['path']} (sha256 {info['data']['sha256']}, {info['data']['length']:,} characters)")
    print("config:")
    for section, values in info["config"].items():
        print(f"  [{section}] " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
    return 0


def cmd_bench(args) -> int:
    from . import bench
    from .data import load_corpus, resolve_data_path

    select_platform(args.platform)
    data_path = resolve_data_path(args.data)
    plan = bench.QUICK if args.quick else bench.FULL
    plan = bench.replace_plan(plan, extra_args=("--data", str(data_path)))
    report = bench.run(plan, load_corpus(data_path), platform=args.platform)
    print(json.dumps(report) if args.json else bench.format_table(report))
    return 0



def cmd_plot(args) -> int:
    from .plot import make_plots

    for path in make_plots(args.workdir, args.out, args.step):
        print(path)
    return 0


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def resume_command(argv: list[str] | None) -> str:
    """The command that continues an interrupted ``train``: the same one, without ``--fresh``."""
    import shlex

    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--fresh"]
    program = "python run.py" if Path(sys.argv[0]).name in ("run.py", "__main__.py", "-c", "") else "jaxbigram"
    return f"{program} {shlex.join(args)}"


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "info": cmd_info, "plot": cmd_plot,
            "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the process exit code (0 ok, 2 bad input, 128+N on signal N)."""
    from .train import Interrupted

    try:
        args = build_parser().parse_args(argv)
        if args.command != "info":
            from .runtime import configure

            # XLA CPU tuning and the compile cache, before the first compile (bench times cold compiles itself)
            configure(getattr(args, "platform", None), compile_cache=args.command != "bench")
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(MESSAGES["interrupted"].format(signal=_signal_name(e.signum), step=e.step, path=e.path,
                                             command=resume_command(argv)), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted (no training step was lost: nothing had started)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def console_main() -> None:
    sys.exit(main())
