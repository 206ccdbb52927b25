"""The command line's flags: ``build_parser`` (every subcommand, its help and examples), the ``type`` callbacks that
refuse a bad value in one line (``FlagRefused`` carries it out of argparse), and ``run_overrides`` (``--steps``,
``--seed`` as the config overrides they are). Parsing only: ``cli`` runs what is parsed."""

from __future__ import annotations

import argparse
import math

from . import errors
from .errors import UsageError
from .runs import resumable_keys_text

DEFAULT_WORKDIR = "runs/default"


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
    """The help's examples: each a command line after the program's name."""
    return "example:\n" + "\n".join(f"  {errors.program()} {e}" for e in examples)


class FlagRefused(Exception):
    """A flag's value refused inside argparse's ``type`` callback, carried out of argparse (which would turn a
    ValueError, as a UsageError is, into its own "invalid value" line) and raised as the UsageError it holds."""

    def __init__(self, error: UsageError):
        self.error = error
        super().__init__(str(error))


def _int_at_least(flag: str, low: int = 0):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            refused = UsageError("cli_usage", prog=flag, message=f"expected an integer, got {text!r}")
            raise FlagRefused(refused) from None
        if value < low:
            raise FlagRefused(UsageError("negative", flag=flag, low=low, got=value))
        return value
    return parse


def _flags(*names: str) -> argparse.ArgumentParser:
    """A parent parser with the flags several subcommands share, each declared here once."""
    parent = argparse.ArgumentParser(add_help=False)
    shared = {
        "workdir": lambda: parent.add_argument("--workdir", default=DEFAULT_WORKDIR,
                                               help="the run's folder (checkpoints, metrics.jsonl)"),
        "platform": lambda: parent.add_argument("--platform", default=None,
                                                help="cpu, gpu or tpu (default: JAX's choice)"),
        "step": lambda: parent.add_argument("--step", type=_int_at_least("--step"), default=None,
                                            help="checkpoint step (default: the newest)"),
        "json": lambda: parent.add_argument("--json", action="store_true", help="print one JSON object on stdout"),
    }
    for name in names:
        shared[name]()
    return parent


def _run_flags(p) -> None:
    """The flags of a training run (``train`` and ``sweep``)."""
    p.add_argument("--config", default=None,
                   help="TOML file or preset name (default: the checkpoint's config when resuming, else 'default')")
    p.add_argument("--data", default=None, help="UTF-8 text file (default: the text a resumed run was trained on, "
                                                "else $JAXBIGRAM_DATA, else data.path, else tinyshakespeare)")
    p.add_argument("--steps", type=_int_at_least("--steps", 1), default=None, help="override train.steps")
    p.add_argument("--seed", type=_int_at_least("--seed"), default=None, help="override train.seed")
    p.add_argument("--fresh", action="store_true",
                   help="start over: the workdir's checkpoints are deleted when the new run saves its first one")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set train.learning_rate=0.01")


def _flops(flag: str):
    """A ``type`` callback: a positive, finite number of FLOPs (``1e12``, ``3.5e13``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise FlagRefused(UsageError("budget_range", got=text)) from None
        if not (math.isfinite(value) and value > 0):
            raise FlagRefused(UsageError("budget_range", got=text))
        return value
    return parse


def run_overrides(args) -> list[str]:
    """``--set`` values, then ``--steps`` and ``--seed`` as the overrides they are."""
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    return overrides


def build_parser() -> argparse.ArgumentParser:
    description = ("jaxbigram: the character-level language models of \"let's build GPT\" (the bigram, and its GPT) "
                   "in functional JAX/Flax.")
    parser = _Parser(prog=errors.program(), description=description, formatter_class=_Formatter,
                     epilog=_epilog("train", "sample --seed 1337"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sweep,sample,eval,info,plot,bench}",
                                parser_class=_Parser)

    def command(name, help, description, examples, *shared):
        return sub.add_parser(name, help=help, description=description, epilog=_epilog(*examples),
                              formatter_class=_Formatter, parents=[_flags(*shared)])

    p = command("train", "train (or resume) a model", "Train a model; resumes from the newest checkpoint in --workdir "
                f"with the run's own config (a --config or --set may then change only {resumable_keys_text()}).",
                ["train --config configs/lecture.toml --workdir runs/lecture",
                 "train --config gpt-cpu --workdir runs/gpt-cpu"], "workdir", "platform")
    _run_flags(p)
    p.add_argument("--distributed", action="store_true",
                   help="multi-process run over several hosts: jax.distributed.initialize, with the cluster "
                        "(SLURM, Open MPI, TPU pod slice, Kubernetes) auto-detected unless the flags below are given")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's address; implies --distributed (unset: $JAX_COORDINATOR_ADDRESS or detected)")
    p.add_argument("--num-processes", type=_int_at_least("--num-processes", 1), default=None, metavar="N",
                   help="number of processes; implies --distributed (unset: detected)")
    p.add_argument("--process-id", type=_int_at_least("--process-id"), default=None, metavar="I",
                   help="this process's index, 0 to N-1; implies --distributed (unset: detected)")
    p.add_argument("--distributed-timeout", type=_int_at_least("--distributed-timeout", 1), default=300,
                   metavar="SECONDS", help="how long every process has to join a multi-process run")

    p = command("sweep", "train many runs (settings × seeds) at once", "Train every combination of the list values "
                "in --set (TOML lists, e.g. train.learning_rate=[1e-3,3e-3]) or in a config's [sweep] table, each with "
                "--seeds seeds, in one compiled program; print per setting the exact val loss over seeds (mean ± std, "
                "min, max; * the best) and write sweep.png. Within a shape only train.learning_rate, min_lr_ratio, "
                "beta1, beta2, weight_decay, grad_clip and seed may vary; model.n_embd, n_layer, n_head, "
                "train.block_size, batch_size and grad_accum make a shape sweep (one program per shape, in "
                "groups/ of the workdir). Resumes like train.",
                ["sweep --seeds 8 --set train.learning_rate=[0.03,0.1,0.3] --workdir runs/sweep",
                 "sweep --workdir runs/sweep --export 3 --out runs/member3"], "workdir", "platform", "json")
    _run_flags(p)
    p.add_argument("--seeds", type=_int_at_least("--seeds", 1), default=None,
                   help="seeds per setting: train.seed, train.seed + 1, … (default: [sweep] seeds, else 1)")
    p.add_argument("--export", type=_int_at_least("--export"), default=None, metavar="K",
                   help="instead of training: write member K of the sweep in --workdir as an ordinary run in --out")
    p.add_argument("--out", default=None, help="with --export: the folder of the exported run")
    p.add_argument("--budget", type=_flops("--budget"), default=None, metavar="FLOPS",
                   help="iso-FLOP: each shape trains for the whole chunks of train.steps_per_call nearest FLOPS "
                        "training FLOPs (instead of train.steps), and the summary names the loss-optimal size "
                        "(e.g. 1e12)")

    p = command("sample", "generate text from a checkpoint", "Generate text from a trained checkpoint; prints only the "
                "text on stdout.", ["sample --seed 1337 --prompt 'ROMEO:' --max-new-tokens 200"],
                "workdir", "step", "platform")
    p.add_argument("--seed", type=_int_at_least("--seed"), default=1337, help="sampling seed")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=None, help="text to continue (default: the first vocabulary character, '\\n')")
    prompt.add_argument("--prompt-file", default=None, metavar="FILE", help="continue the UTF-8 text of FILE (as is)")
    p.add_argument("--max-new-tokens", type=_int_at_least("--max-new-tokens"), default=500,
                   help="characters to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (> 0)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely characters (default: off)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the smallest set reaching probability p (default: off)")
    p.add_argument("--num-samples", type=_int_at_least("--num-samples", 1), default=1, help="independent samples")

    p = command("eval", "exact train/val loss of a checkpoint", "Exact loss over every position of the train and val "
                "splits, bits/char, and the closed-form bigram optimum (a bigram's floor, any other model's "
                "baseline).", ["eval --json"], "workdir", "step", "platform", "json")
    p.add_argument("--data", default=None, help="text file (default: the one the checkpoint was trained on)")

    command("info", "describe a run's checkpoints", "Model, parameters, checkpoint steps, best val loss, config, "
            "vocabulary and data source of a run.", ["info --workdir runs/default"], "workdir", "json")

    p = command("plot", "draw loss curves (and the learned bigram, or a GPT's attention) as PNGs", "Write loss.png "
                "(train/val loss estimates by step, the closed-form bigram optima dashed) and, for a bigram, bigram.png "
                "(the V×V table of next-character probabilities); with --attention instead attention.png (a GPT's "
                "attention weights over a prompt, layer × head). Needs the [plot] extra.",
                ["plot --workdir runs/default --out docs", "plot --attention --prompt 'ROMEO:' --workdir runs/gpt-cpu"],
                "workdir", "step")
    p.add_argument("--out", default=None, help="directory for the PNGs (default: the workdir)")
    p.add_argument("--attention", action="store_true",
                   help="draw attention.png only: a GPT checkpoint's attention maps over --prompt")
    p.add_argument("--prompt", default=None, help="with --attention: the text to look at (its last block_size "
                                                  "characters; default: the start of Romeo's balcony speech)")

    p = command("bench", "measure training, sampling and data-prep speed", "Benchmark this machine: fused training "
                "next to a naive jit-per-step loop, whole preset runs, sampling, data prep and peak memory (medians "
                "of repeats, after warm-up; see docs/performance.md).",
                ["bench --quick", "bench --json > bench.json", "bench --scaling", "bench --against torch --json",
                 "bench --sweeps --json", "bench --grad-accum"],
                "platform", "json")
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller corpora (about half the time)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--scaling", action="store_true",
                      help="instead: a big generated corpus with a big vocabulary through train/eval/sample")
    p.add_argument("--data", default=None, help="text to train on (default: $JAXBIGRAM_DATA, else tinyshakespeare)")
    mode.add_argument("--against", choices=["torch"], default=None,
                      help="instead: whole runs of the lecture's bigram and gpt-cpu next to a PyTorch reference of the "
                           "same loops, alternating (needs the [compare] extra)")
    mode.add_argument("--sweeps", action="store_true",
                      help="instead: sweeps next to single runs — bigram default × 64 seeds and gpt-tiny × 16 vs one "
                           "run, gpt-cpu × 4 vs 4 runs one after the other (sweep time / single time)")
    mode.add_argument("--grad-accum", action="store_true",
                      help="instead: a gpt-cpu step with train.grad_accum = 1 next to 4 (same batch, 4 microbatches), "
                           "alternating, with each one's activation memory estimate")
    p.add_argument("--pairs", type=_int_at_least("--pairs", 1), default=None,
                   help="with --against: jaxbigram/PyTorch pairs of runs (default 3; --quick: 1); with --sweeps: "
                        "single/sweep pairs of each case (default 3, gpt-cpu 1; --quick: 1)")
    return parser
