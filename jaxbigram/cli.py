"""Command line: ``train``, ``sample``, ``eval``, ``info``, ``plot``, ``bench``. Parses flags, calls the library,
prints; maps every ``JaxbigramError`` to one ``error: …`` line and exit code 2 (and signals to 128 + N)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from . import errors, signals
from .errors import Interrupted, JaxbigramError, UsageError, message, printable_path, shell_join, shell_word
from .flags import DEFAULT_WORKDIR, FlagRefused, build_parser, run_overrides
from .runs import WORKDIR_ROOM

# ----------------------------------------------------------------------------- printing

def _print_report(report: dict, out) -> None:
    def loss(split):
        if report[f"{split}_loss"] is None:
            return f"{split}: not computed (a full pass over the split; `{errors.program()} eval` does it)"
        return f"{split} {report[f'{split}_loss']:.4f} nats ({report[f'{split}_bpc']:.4f} bits/char)"

    gaps = ", ".join(f"{split} {report[f'gap_{split}']:+.4f}" for split in ("train", "val")
                     if report[f"gap_{split}"] is not None)
    print(f"exact loss at step {report['step']}: {loss('train')}, {loss('val')}", file=out)
    what = "gap" if report.get("model", "bigram") == "bigram" else "vs the bigram baseline"
    print(f"closed-form bigram optimum: train {report['optimum_train_loss']:.4f} (count model), "
          f"val {report['optimum_val_loss']:.4f} (add-one smoothed count model); {what}: {gaps}", file=out)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- subcommands

# each path flag: what its messages call the path, and how many bytes a command writes below it
_PATH_FLAGS = {"--workdir": ("workdir", WORKDIR_ROOM), "--data": ("data", 0), "--config": ("config", 0),
               "--prompt-file": ("prompt file", 0), "--out": ("output folder", len("/bigram.png"))}


def _check_paths(args, *flags: str) -> None:
    """Refuse, with one line, a path flag no file operation could use (``paths.check_user_path``), before any work."""
    from .paths import check_user_path

    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            check_user_path(Path(value).expanduser(), flag, *_PATH_FLAGS[flag])


def cmd_train(args) -> int:
    from . import parallel
    from .runtime import select_platform
    from .train import train_and_evaluate

    _check_paths(args, "--workdir", "--data", "--config")
    overrides = run_overrides(args)
    if args.distributed or any(v is not None for v in (args.coordinator, args.num_processes, args.process_id)):
        parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id,  # before any JAX work
                                        args.distributed_timeout)
        parallel.silence_non_primary()  # only process 0 prints from here on
    _log(select_platform(args.platform))
    started = time.perf_counter()
    result = train_and_evaluate(args.workdir, config_path=args.config, overrides=overrides, data=args.data,
                                fresh=args.fresh, out=sys.stdout, err=sys.stderr)
    if result.report is None:  # the run was already at train.steps: fit's note said so, and how to continue
        return 0
    print(f"trained to step {result.report['step']} in {time.perf_counter() - started:.1f} s "
          f"({result.steps_per_second:,.0f} steps/s)")
    _print_report(result.report, sys.stdout)
    _log(f"checkpoints: {printable_path(Path(args.workdir).absolute() / 'checkpoints')}  "
         f"(next: {errors.program()} sample --workdir {shell_word(args.workdir)})")
    return 0


def cmd_sweep(args) -> int:
    from . import sweep, sweep_export, sweep_report, sweep_shapes
    from .runtime import select_platform

    _check_paths(args, "--workdir", "--data", "--config", "--out")
    if args.export is None and args.out is not None:
        raise UsageError("sweep_out_alone")
    if args.export is not None:
        training = [flag for flag, value in (("--config", args.config), ("--data", args.data), ("--steps", args.steps),
                                             ("--seed", args.seed), ("--fresh", args.fresh),
                                             ("--set", args.overrides), ("--seeds", args.seeds),
                                             ("--budget", args.budget))
                    if value not in (None, False, [])]
        if training:
            raise UsageError("sweep_export_flags", flags=", ".join(training))
        if args.out is None:
            raise UsageError("sweep_export_out")
        folder = sweep_export.export_member(args.workdir, args.export, args.out, log=_log)
        print(printable_path(folder))
        _log(f"next: {errors.program()} sample --workdir {shell_word(args.out)}")
        return 0
    if args.budget is not None and args.steps is not None:
        raise UsageError("budget_steps", what="--steps")
    plan = sweep.make_plan(args.config, run_overrides(args), args.seeds, budget=args.budget)
    _log(select_platform(args.platform))
    started = time.perf_counter()
    result = sweep.run_sweep(args.workdir, plan, data=args.data, fresh=args.fresh, err=sys.stderr)
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps({"step": result.step, "seconds": seconds, "settings": result.rows,
                          "val_loss": sweep_report.finite_or_none(result.val),  # JSON has no NaN: diverged is null
                          "train_loss": None if result.train is None else sweep_report.finite_or_none(result.train),
                          "diverged": {str(k): s for k, s in sorted(result.diverged.items())},
                          "plot": None if result.plot is None else str(result.plot), "fit": result.fit,
                          "budget": result.budget},
                         allow_nan=False))
    else:
        print(f"swept {len(result.val)} members to step {result.step} in {seconds:.1f} s")
        print(sweep_report.format_table(result.rows, steps=result.budget is not None))
        if result.groups:
            print(sweep_shapes.format_fit(result.fit))
        if result.budget is not None:
            print(sweep_shapes.format_budget(result.budget))
    if result.plot is not None:
        _log(f"plot: {printable_path(result.plot)}")
    return 0


def cmd_sample(args) -> int:
    from .files import read_text_file
    from .runs import load_checkpoint
    from .runtime import select_platform
    from .sampling import sample_text

    _check_paths(args, "--workdir", "--prompt-file")
    if not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise UsageError("temperature", got=args.temperature)
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError("top_p", got=args.top_p)
    text = read_text_file(args.prompt_file) if args.prompt_file is not None else args.prompt
    backend = select_platform(args.platform)
    ckpt = load_checkpoint(args.workdir, args.step)
    vocab = ckpt.tokenizer.vocab_size
    if args.top_k is not None and not 1 <= args.top_k <= vocab:
        raise UsageError("top_k", vocab=vocab, got=args.top_k)
    prompt_ids = [0] if text is None else ckpt.tokenizer.encode_prompt(text)
    _log(f"sampling from step {ckpt.step} of {printable_path(ckpt.workdir)} ({ckpt.model.kind}; {backend})")
    out = sys.stdout
    for i in range(args.num_samples):
        if args.num_samples > 1:
            out.write(("" if i == 0 else "\n") + f"---------- sample {i + 1} of {args.num_samples} ----------\n")
        for text in sample_text(ckpt.model, ckpt.params, ckpt.tokenizer, args.seed, prompt_ids, args.max_new_tokens,
                                args.temperature, args.top_k or 0, args.top_p or 1.0, index=i):
            out.write(text)
            out.flush()
        out.write("\n")
    out.flush()
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_checkpoint
    from .runtime import select_platform

    _check_paths(args, "--workdir", "--data")
    select_platform(args.platform)
    report = evaluate_checkpoint(args.workdir, args.step, args.data, log=_log)
    unscored = [k for k, v in report.items() if isinstance(v, float) and not math.isfinite(v)]
    if unscored:
        _log(f"note: {', '.join(unscored)} cannot be scored (a split too small for one character pair): "
             f"shown as {'null' if args.json else 'nan'}")
    if args.json:
        print(json.dumps({k: None if k in unscored else v for k, v in report.items()}))
    else:
        _print_report(report, sys.stdout)
    return 0


def cmd_info(args) -> int:
    from .runs import run_info

    from .sweep_shapes import shape_sweep_info

    _check_paths(args, "--workdir")
    shapes = shape_sweep_info(args.workdir, log=_log)
    if shapes is not None:
        if args.json:
            print(json.dumps(shapes, ensure_ascii=False))
            return 0
        print(f"workdir:     {printable_path(shapes['workdir'])}")
        print(f"shape sweep: {shapes['members']} members in {len(shapes['groups'])} shapes, one sweep each "
              f"(`{errors.program()} sweep --export K --out DIR` writes member K as a run; members are numbered shape "
              f"by shape)")
        for g in shapes["groups"]:
            sw = g["sweep"] or {}
            print(f"  {printable_path(g['folder'])}: members {g['first_member']} to "
                  f"{g['first_member'] + (sw.get('members') or 1) - 1}, {g['model']}, {g['num_params']:,} parameters, "
                  f"step {g['latest_step']}: {'; '.join(sw.get('settings') or [])}")
        return 0
    info = run_info(args.workdir, log=_log)
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return 0
    print(f"workdir:     {printable_path(info['workdir'])}")
    params = f", {info['num_params']:,} parameters" if info["num_params"] else ""
    print(f"model:       {info['model']}{params}")
    print(f"checkpoints: steps {', '.join(map(str, info['steps']))} (latest {info['latest_step']})")
    if info["sweep"]:
        sw = info["sweep"]
        print(f"sweep:       {sw['members']} members = {len(sw['settings'] or [])} setting(s) × {sw['seeds']} seed(s): "
              f"{'; '.join(sw['settings'] or [])} (`{errors.program()} sweep --export K --out DIR` writes one as a run)")
    if info["best_step"] is not None:
        print(f"best kept:   val est. {info['best_val_loss']:.4f} at step {info['best_step']} (the best of the "
              f"checkpoints kept)")
    if info["metrics"]:
        m = info["metrics"]
        print(f"metrics:     {m['evals']} evals up to step {m['last_step']} in {printable_path(m['path'])}; lowest "
              f"val est. of any eval {m['best_val_loss']:.4f} at step {m['best_step']}")
        if m["last_sample"]:
            from .progress import quote_sample

            print(f"sample:      at step {m['last_sample']['step']} (the last eval's):\n"
                  f"{quote_sample(m['last_sample']['text'])}")
    if info["exact"]:
        print(f"exact:       val loss {info['exact']['val_loss']:.4f} nats at step {info['exact']['step']}, "
              f"bigram optimum {info['exact']['optimum_val_loss']:.4f}")
    print(f"vocab:       {info['vocab_size']} characters: {info['vocab']!r}")
    print(f"data:        {printable_path(info['data']['path'])} (sha256 {info['data']['sha256']}, "
          f"{info['data']['length']:,} characters)")
    print("config:")
    for section, values in info["config"].items():
        print(f"  [{section}] " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
    return 0


def cmd_plot(args) -> int:
    from .plot import make_attention_plot, make_plots

    if args.prompt is not None and not args.attention:
        raise UsageError("plot_prompt_alone")
    _check_paths(args, "--workdir", "--out")
    if args.attention:
        paths = [make_attention_plot(args.workdir, args.out, args.step, args.prompt)]
    else:
        paths = make_plots(args.workdir, args.out, args.step, log=_log)
    for path in paths:
        print(printable_path(path))
    return 0


def cmd_bench(args) -> int:
    from . import bench
    from .runtime import select_platform

    _log(select_platform(args.platform))
    if args.against:
        from .data import resolve_data_path

        bench.require_torch()  # before the data: the missing package is the first thing to say
        pairs = args.pairs or (1 if args.quick else bench.TorchPlan.pairs)
        report = bench.run_against_torch(bench.TorchPlan(pairs=pairs), str(resolve_data_path(args.data)[0]),
                                         args.platform, log=_log)
    elif args.sweeps:
        from .data import resolve_data_path

        report = bench.run_sweeps(bench.SweepPlan(), str(resolve_data_path(args.data)[0]), args.platform,
                                  pairs=args.pairs or (1 if args.quick else None), log=_log)
    elif args.grad_accum:
        plan = bench.GradAccumPlan(repeats=1, steps=5) if args.quick else bench.GradAccumPlan()
        report = bench.grad_accum_step_times(plan, args.data, log=_log)
        print(json.dumps(report) if args.json else bench.format_grad_accum(report))
        return 0
    else:
        report = bench.run(quick=args.quick, scaling=args.scaling, data=args.data, platform=args.platform, log=_log)
    print(json.dumps(report) if args.json else bench.format_table(report))
    return 0


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "sample": cmd_sample, "eval": cmd_eval, "info": cmd_info, "plot": cmd_plot,
            "bench": cmd_bench}


def resume_command(argv: list[str], keep_fresh: bool = False) -> str:
    """The command that continues an interrupted ``train``: the same one, without ``--fresh`` once the new run has
    saved a checkpoint (``keep_fresh`` when it has not: then nothing changed yet)."""
    return f"{errors.program()} {shell_join(a for a in argv if keep_fresh or a != '--fresh')}"


def _stopped_detail(command: str | None, argv) -> str:
    """What a stop outside the training loop left behind, said truthfully for each command."""
    if command == "train":
        workdir = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--workdir"), DEFAULT_WORKDIR)
        return (f": every checkpoint in {printable_path(workdir)} is complete (a step is written whole or not at "
                f"all); to continue: {resume_command(argv)}")
    return ""


def main(argv: list[str] | None = None, program: str | None = None) -> int:
    """Entry point: returns the process exit code (0 ok, 2 bad input, 128+N on signal N). ``program`` is the command
    the user ran, as messages name it (``python run.py``, ``jaxbigram``, ``python -m jaxbigram``; default: as before).

    SIGINT and SIGTERM end the command at once with one line (``signals.exiting_on_signal``), except inside the
    training loop, which finishes its chunk, saves and raises ``Interrupted``; either way the exit code is 128 + N.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if program is not None:
        errors.set_program(program)
    context = {"argv": argv}

    def stopped_line(signal_name: str) -> str:
        return message("stopped", signal=signal_name, detail=_stopped_detail(context.get("command"), argv))

    try:
        with signals.exiting_on_signal(stopped_line):
            return _run(argv, context)
    except JaxbigramError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(message("interrupted" if e.saved else "interrupted_unsaved", signal=signals.signal_name(e.signum),
                      step=e.step, path=e.path, command=resume_command(argv, not e.saved)), file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 0
    except Exception as e:  # XLA running out of device or host memory despite the estimate: one line, not a trace
        if "RESOURCE_EXHAUSTED" not in str(e) and "Out of memory" not in str(e):
            raise
        print(f"error: {message('xla_oom', reason=str(e).splitlines()[0][:200])}", file=sys.stderr)
        return 2


def _run(argv: list[str], context: dict) -> int:
    """Parse ``argv``, set up the runtime, run the command."""
    try:
        args = build_parser().parse_args(argv)
    except FlagRefused as e:
        raise e.error from None
    context["command"] = args.command
    from . import runtime

    if args.command == "info":  # it starts no computation: only XLA_FLAGS, which XLA would abort on
        runtime.check_xla_flags()
    else:  # XLA CPU tuning and the compile cache, before the first compile (bench times cold compiles itself)
        runtime.configure(getattr(args, "platform", None), compile_cache=args.command != "bench", log=_log)
    return COMMANDS[args.command](args)


def console_main(program: str = "jaxbigram") -> None:
    """``jaxbigram``, ``python run.py`` and ``python -m jaxbigram`` (each passes its ``program``): run, then exit with
    signals ignored, so that a Ctrl-C while the interpreter shuts down (JAX's and orbax's exit hooks) cannot print a
    traceback after the command's last line."""
    code = main(program=program)
    signals.ignore_at_exit()
    sys.stdout.flush()
    sys.exit(code)
