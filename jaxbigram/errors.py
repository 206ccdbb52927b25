"""Every message a user can cause, in one place, the error types that carry them, and how a value is shown in one.

Code raises ``UsageError(CODE, **fields)`` (bad input: flags, config, data, prompt), ``CheckpointError`` (a checkpoint
missing, damaged or from another run), ``DownloadError`` (the dataset could not be fetched) or ``ResourceError`` (a
run that cannot fit); a library function called with a bad argument raises ``ArgumentError`` (a ``UsageError``) or
``ArgumentTypeError`` (see ``checks``). ``UsageError`` is a ``ValueError`` and ``ArgumentTypeError`` a ``TypeError``, as a
Python caller expects. All are ``JaxbigramError``: ``cli.main`` prints ``error: <text>`` and exits 2. Notes and
warnings are ``message(CODE, **fields)``, printed by the caller.

Every message is formatted by ``message``: each field is shown on one printable line (``printable_path``: a newline,
a tab, an escape character or a byte that is not UTF-8 in a file name is escaped), ``{program}`` is the command the
user ran (``python run.py``, ``jaxbigram`` or ``python -m jaxbigram``: ``set_program``), and ``{field:shell}`` is a
field quoted as one shell word, to paste into a command.
"""

from __future__ import annotations

import os
import shlex
import string

MESSAGES = {
    # data
    "data_missing": "data file {path} does not exist: pass an existing text file with --data PATH (or set JAXBIGRAM_DATA)",
    "data_is_dir": "data path {path} is a directory: pass a text file with --data PATH",
    "data_unreadable": "cannot read data file {path} ({reason}): check its permissions or pass another file with --data PATH",
    "data_empty": "data file {path} is empty: pass a non-empty UTF-8 text file with --data PATH",
    "data_not_utf8": "data file {path} is not UTF-8 text (invalid byte at offset {offset}): convert it to UTF-8 or pass another file with --data PATH",
    "data_too_short": "data file {path} has {n} characters, fewer than block_size + 2 = {need}: use a longer text or a smaller train.block_size",
    "val_too_short": "the validation split has {n} characters, fewer than block_size + 2 = {need}: raise data.val_fraction, lower train.block_size, or use a longer text",
    "train_too_short": "the train split has {n} characters, fewer than block_size + 2 = {need}: lower data.val_fraction or train.block_size, or use a longer text",
    "text_too_short_for": "`{command}` needs a text of at least {need} characters ({what} uses block_size {block}, and the train and val splits must each hold block_size + 2 characters); {path} has {n}: pass a longer text with --data PATH",
    "data_not_regular": "data path {path} is {kind}, not a regular file (reading it could block or never end): pass a regular text file with --data PATH",
    "data_too_big": "data file {path} ({size}) needs about {need} of memory to load but only {available} is available: use a smaller text or free memory",
    "data_too_long": "data file {path} has {n} characters, more than JAX's int32 indices reach ({limit}): use a shorter text",
    "download_failed": "could not download tinyshakespeare from {url} ({reason}): pass a local text file with --data PATH or set JAXBIGRAM_DATA=PATH",
    "data_no_cache": "no text to train on: no --data, no JAXBIGRAM_DATA, and no user cache folder to download tinyshakespeare into (HOME and XDG_CACHE_HOME are unset): pass a text file with --data PATH or set JAXBIGRAM_DATA=PATH",
    "download_checksum": "downloaded tinyshakespeare has sha256 {got}, expected {want}: retry, or pass a local copy with --data PATH or JAXBIGRAM_DATA=PATH",
    # any other file read (prompt file, ...): {what} names it, {flag} the option that passes it
    "file_missing": "{what} {path} does not exist: pass an existing file with {flag}",
    "file_is_dir": "{what} {path} is a directory: pass a text file with {flag}",
    "file_not_regular": "{what} {path} is {kind}, not a regular file (reading it could block or never end): pass a regular text file with {flag}",
    "file_unreadable": "cannot read {what} {path} ({reason}): check its permissions or pass another file with {flag}",
    "file_empty": "{what} {path} is empty: pass a non-empty UTF-8 text file with {flag}",
    "file_not_utf8": "{what} {path} is not UTF-8 text (invalid byte at offset {offset}): convert it to UTF-8 or pass another file with {flag}",
    "file_too_big": "{what} {path} is {size} bytes, more than the {limit} bytes allowed: pass a smaller file with {flag}",
    # paths
    "path_not_utf8": "{what} path {path} is not valid UTF-8 (checkpoints store paths as UTF-8 text and orbax/TensorStore cannot open it): rename it, or pass a symlink with a UTF-8 name, with {flag}",
    "path_nul": "{what} path {path} contains a NUL byte: pass a valid path with {flag}",
    "path_too_long": "{what} path {path} is too long ({detail}): use a shorter path for {flag}",
    "path_not_dir": "{what} path {path} goes through {file}, which is a file, not a folder: use another path for {flag}",
    "path_unusable": "{what} path {path} cannot be used ({reason}): use another path for {flag}",
    # memory
    "xla_oom": "the run ran out of memory ({reason}): lower train.batch_size, train.block_size, eval.iters or the model size",
    "too_big": "this run needs about {need} of memory but only {available} is available; the biggest part is {term} ({size}): {advice}",
    # config
    "config_missing": "config file {path} does not exist: pass an existing TOML file or a preset name with --config (presets: {presets})",
    "config_empty": "config file {path} is empty (read as the defaults)",
    "config_syntax": "config file {path} is not valid TOML ({reason}): fix the syntax at the line shown",
    "config_unknown_section": "unknown config section [{section}]{hint}: valid sections are {valid}",
    "config_unknown_key": "unknown config key {key}{hint}: valid keys in [{section}] are {valid}",
    "config_not_table": "config section [{section}] must be a table of key = value pairs",
    "config_type": "config key {key} must be {expected}, got {got!r}",
    "config_range": "config key {key} must be {rule}, got {got!r}",
    "config_not_finite": "config key {key} must be a finite number, got {got!r}",
    # gradient accumulation and shape sweeps (issue 27)
    "config_grad_accum": "config key train.grad_accum = {got} does not divide train.batch_size = {batch_size} (each step runs the batch as grad_accum equal microbatches): use {works}",
    "too_big_accum": "{reason}; or set train.grad_accum = {k} (the batch runs as {k} microbatches of {micro}: the same optimisation with a fraction of the activations)",
    "sweep_duplicate": "--set {key} (or [sweep] {key}) lists {got!r} twice ({values!r}): give each value once",
    "is_shape_sweep": "{workdir} holds a shape sweep (one sweep per shape under groups/), not one run or one sweep: resume it with the same `{program} sweep` command, list it with `{program} info --workdir {workdir:shell}`, write member K as a run with `{program} sweep --workdir {workdir:shell} --export K --out DIR`, or use another --workdir",
    "shape_sweep_mixed": "{workdir} already holds {what}: a shape sweep trains its shapes under groups/ of a folder of its own; use another --workdir",
    # sweep --budget FLOPS: iso-FLOP shape sweeps (issue 27 section 2)
    "budget_range": "--budget must be a positive, finite number of FLOPs (e.g. 1e12 or 3.5e13), got {got!r}",
    "budget_steps": "--budget and {what} both set the steps: under --budget each size trains for the steps that spend the budget, so leave train.steps out (or drop --budget)",
    "budget_too_small": "--budget {budget} FLOPs is less than one chunk of {size}: its train.steps_per_call = {chunk} steps cost {flops} FLOPs; pass --budget {works} or more (one chunk of the largest size), or lower train.steps_per_call",
    "budget_too_big": "--budget {budget} FLOPs buys {size} {steps} steps, more than train.steps may be ({max}): lower --budget",
    "config_product": "config keys {keys} multiply to {got}, more than {limit} ({why}): lower one of them",
    "config_choice": "config key {key} must be one of {choices}, got {got!r}",
    "set_syntax": "--set expects section.key=value, got {got!r}: for example --set train.learning_rate=0.01",
    "set_key": "--set key {key!r} must be section.key, for example train.steps",
    # sampling
    "temperature": "--temperature must be a finite number > 0 (a tiny one means greedy), got {got}",
    "top_k": "--top-k must be between 1 and the vocabulary size {vocab}, got {got}",
    "top_p": "--top-p must be in (0, 1], got {got}",
    "negative": "{flag} must be >= {low}, got {got}",
    "prompt_unknown": "the prompt has characters outside the model's vocabulary: {chars}; the vocabulary is stored in the checkpoint (see `{program} info`): use only those characters",
    "eval_unknown_chars": "{path} has {n} characters outside the checkpoint's vocabulary ({chars}): evaluate on text written in the model's characters (see `{program} info`)",
    "prompt_file": "cannot read prompt file {path} ({reason}): pass an existing UTF-8 text file with --prompt-file",
    "prompt_empty": "the prompt is empty: pass at least one character, or leave --prompt out to start from the first vocabulary character",
    # checkpoints
    "no_checkpoint": "no checkpoint in {workdir}: run `{program} train --workdir {workdir:shell}` first",
    "no_step": "no checkpoint for step {step} in {workdir}: available steps are {steps}",
    "corrupt_checkpoint": "checkpoint step {step} in {workdir} is truncated or corrupted ({reason}): use --step with an older step ({steps}); `train` in that workdir resumes from the newest intact step",
    "step_moved": "checkpoint step {step} in {workdir} was removed while it was being read (a running `train` keeps only its newest steps): pass --step with one of {steps}, or leave --step out for the newest",
    "incompatible": "the checkpoint in {workdir} was trained on {what}: pass --fresh to start a new run there, or use another --workdir",
    "config_changed": "the run in {workdir} was trained with other settings ({keys}): resume without --config/--set (the checkpoint's config is the run's config; only {resumable} may change), or start a new run with --fresh or another --workdir",
    "model_unknown": "unknown model.kind {got!r}: choose one of {choices}",
    "workdir_not_writable": "workdir {workdir} is not writable ({reason}): pass a writable --workdir",
    "workdir_busy": "another `train` is running in {workdir}: wait for it, stop it (Ctrl-C saves a checkpoint), or pass another --workdir",
    "workdir_empty": "--workdir is empty: name a folder for the run, for example --workdir runs/default",
    "workdir_foreign": "workdir {workdir} holds what this program did not write ({what}): nothing was changed there; pass another --workdir",
    "workdir_is_file": "workdir {workdir} is a file: pass a directory with --workdir",
    "folder_not_writable": "{path} is not writable ({reason}): `train` writes into it; make it writable for this user, or pass another --workdir",
    "lock_unwritable": "cannot open {path} for writing ({reason}): it is the lock `train` takes while it runs; if no `train` is running there, delete it or make it writable for this user, or pass another --workdir",
    # training
    "save_denied": "cannot write step {step} in {directory} ({reason}): make it writable for this user and run the same command to resume from {resume} (the earlier checkpoints are intact)",
    "disk_full": "no space left on device while saving step {step} in {directory}: free space and run the same command to resume from {resume} (the earlier checkpoints are intact)",
    "non_finite": "the training loss became {value} at step {step}: lower train.learning_rate or enable train.grad_clip; the last good checkpoint stays the latest",
    "distributed_init": "could not start the multi-process run ({reason}): pass --coordinator HOST:PORT, --num-processes N and --process-id I, or launch under a cluster manager JAX detects (SLURM, Open MPI, TPU pod slice, Kubernetes)",
    "coordinator_address": "--coordinator must be HOST:PORT with a port from 1 to 65535 (IPv6: [::1]:PORT), got {got!r}",
    "process_id_range": "--process-id must be from 0 to --num-processes - 1 = {n} - 1, got {got}",
    "distributed_timeout": "not every process joined the multi-process run within {timeout} s (this is process {me} of {n}; {reason}): start the missing processes with the same --coordinator and --num-processes, or raise --distributed-timeout",
    "signal_after_finish": "note: received {signal} after the last chunk: the run finished at step {step} and is saved (nothing was cut short)",
    "all_diverged": "the training loss of every one of the sweep's {members} members became non-finite (by step {step}): lower train.learning_rate or enable train.grad_clip; the last checkpoint stays the latest",
    "interrupted": "stopped by {signal} at step {step}; checkpoint saved in {path}. To resume: {command}",
    "interrupted_unsaved": "stopped by {signal} at step {step}, before this run trained a step: nothing was written to {path}. To start again: {command}",
    "stopped": "stopped by {signal}{detail}",
    "batch_devices": "train.batch_size {batch} is not divisible by the {devices} devices in use: pick a batch size that is a multiple of {devices}",
    "cpu_devices_env": "{env}={got!r} is not a device count: set it to a whole number from 1 to {max}, or unset it (2 CPU devices)",
    "devices_unavailable": "train.devices = {requested} but JAX has {available} device(s) here: set train.devices to at most {available} (0 picks automatically)",
    # sweeps
    "sweep_shape_keys": "a sweep's members of one shape must share one compiled program, but its settings differ in {keys}: sweep only {allowed} within a shape, and the shape keys {shapes} across shapes (one value each for everything else; grad_clip all 0 or all > 0)",
    "sweep_seeds": "seeds (--seeds or [sweep] seeds) must be a whole number from 1 to {max}, got {got!r}",
    "sweep_members": "{seeds} seeds × {settings} settings = {members} members, more than {max}: sweep fewer at once",
    "sweep_key": "[sweep] {key}: a swept key is section.key (e.g. \"train.learning_rate\" = [0.01, 0.1]), or seeds = N",
    "sweep_not_list": "[sweep] {key} = {got!r} is not a list: give the values to sweep as a TOML list, e.g. \"{key}\" = [0.01, 0.1]",
    "sweep_empty_list": "--set {key}=[] (or [sweep] {key}) has no value: give at least one, e.g. {key}=[0.01, 0.1]",
    "sweep_changed": "the checkpoints in {workdir} are of {what}: run the same sweep command to resume it (only {resumable} may change), or start over with --fresh or another --workdir",
    "sweep_member": "--export {got} is not a member of the sweep in {workdir}: members are 0 to {last} (setting × seed, in the order of the table)",
    "sweep_member_diverged": "member {k} of the sweep in {workdir} diverged at step {step} (its training loss became non-finite; its parameters are not a model): export another member (`info` lists the sweep)",
    "sweep_export_exists": "--out {out} already holds checkpoints: export into a new folder",
    "sweep_devices": "train.devices = {devices} does not divide the sweep's {members} members evenly: set train.devices to a divisor of {members}, or 0 (automatic)",
    "sweep_too_big": "the sweep's {members} members need about {need} of memory ({each} each) but only {available} is available: sweep at most {fits} members at once (fewer --seeds or list values), or lower train.batch_size",
    "is_sweep": "the checkpoints in {workdir} are a sweep of {members} runs, not one run: write member K (0 to {last}) as a run folder with `{program} sweep --workdir {workdir:shell} --export K --out DIR` and use DIR (`{program} info --workdir {workdir:shell}` lists the settings)",
    "sweep_no_checkpoint": "no checkpoint in {workdir} to export a member from: run `{program} sweep --workdir {workdir:shell}` (with its --seeds and --set) first",
    "sweep_export_out": "--export needs --out DIR, the folder of the exported run",
    # sweep --export and its flags, reading a running sweep (issue 26 items 3, 4, 9)
    "sweep_out_alone": "--out is the folder of an exported member: it needs --export K (to train a sweep, leave --out out)",
    "sweep_export_flags": "sweep --export writes member K of the sweep saved in --workdir as it is: it takes no {flags} (give those when training the sweep, then export)",
    "sweep_out_is_file": "--out {workdir} is a file: pass a folder for the exported run with --out DIR",
    "sweep_out_unwritable": "--out {workdir} is not writable ({reason}): pass a writable folder with --out DIR",
    "sweep_out_foreign": "--out {workdir} holds what this program did not write ({what}): nothing was changed there; pass another --out",
    "sweep_out_busy": "a `train` is running in --out {workdir}: export into another folder with --out DIR",
    "sweep_out_in_run": "--out {out} is inside {folder}, the checkpoints of the run in {run}: the exported run would sit among that run's steps; pass an --out outside it",
    "sweep_corrupt": "checkpoint step {step} in {workdir} is truncated or corrupted ({reason}): run the same `{program} sweep` command in that workdir (it sets the step aside and resumes from the newest intact one, {steps}), then export",
    # command line
    "cli_usage": "{prog}: {message} (see --help)",
    # platform
    "platform_unknown": "unknown --platform {got!r}: choose cpu, gpu or tpu",
    "platform_unavailable": "platform {got!r} is not available on this machine ({reason}): use --platform cpu or install the matching jax plugin",
    "plot_out_is_file": "--out {out} is a file: pass a folder for the PNGs with --out DIR",
    "plot_out_unwritable": "cannot write the PNGs into {out} ({reason}): pass a writable folder with --out DIR",
    "attention_no_attention": "{workdir} holds a {model}, which has no attention: `{program} plot --attention` needs a GPT checkpoint (train one with --config gpt-cpu)",
    "plot_prompt_alone": "--prompt only sets what `{program} plot --attention` reads: add --attention, or leave --prompt out",
    "extra_missing": "`{program} {command}` needs the optional package {package}: pip install 'jaxbigram[{extra}]'",
    "xla_flag_value": "XLA_FLAGS sets --{flag}={got}: set it to a whole number from {low} to {high}, or remove it from XLA_FLAGS",
    # the library API's arguments (issue 26, the library API: checks.py raises it as ArgumentError / ArgumentTypeError)
    "api_argument": "{function}: {argument} must be {expected}, got {got}",
    # notes and warnings: printed (on stderr) as they are, the command goes on
    "compile_cache_unusable": "the compile cache folder {path} cannot be used ({reason}): set JAXBIGRAM_COMPILE_CACHE to a writable folder, or to off",
    "note_uncached": "note: compiling without a cache: {problem}",
    "warn_step_set_aside": "warning: checkpoint step {step} is damaged ({reason}); moved it to {target}; trying the previous one",
    "warn_metrics_unreadable": "warning: cannot read {path} ({reason}); the metrics log is ignored",
    "warn_metrics_damaged": "warning: skipped {n} damaged line(s) of {path}",
    "warn_metrics_not_regular": "warning: {path} is not a regular file: this run's evals are not logged there",
    "warn_events_unwritable": "warning: cannot write TensorBoard events into {path} ({reason}): {fallback}",
    "warn_metrics_unwritable": "warning: cannot write {path} ({reason}): this run's evals are not logged",
    "note_other_text": "note: {path} (from {source}) is not the text step {step} was trained on (sha256 {sha256}…, trained on {trained_sha256}… at {trained_path})",
}

_program = "python run.py"


def set_program(name: str) -> None:
    """The command the user ran, as every message and hint names it: ``python run.py``, ``jaxbigram`` or
    ``python -m jaxbigram`` (set once, by the entry point)."""
    global _program
    _program = name


def program() -> str:
    """The command the user ran (see ``set_program``)."""
    return _program


def _escaped(value, quote: str = "") -> tuple[str, bool]:
    """``value`` (str, bytes or PathLike) with each character that is not printable, and each byte that is not
    UTF-8, as a backslash escape (``\\n``, ``\\x1b``, ``\\xff``), the characters in ``quote`` backslash-escaped;
    and whether anything but ``quote`` was escaped."""
    try:
        text = os.fsdecode(value)
    except (TypeError, ValueError):
        text = str(value)
    out, escaped = [], False
    for c in text:
        if "\udc80" <= c <= "\udcff":  # a byte that is not UTF-8 (os.fsdecode's surrogateescape)
            out.append(f"\\x{ord(c) - 0xdc00:02x}")
        elif not c.isprintable():
            out.append(c.encode("unicode_escape").decode("ascii"))
        else:
            out.append("\\" + c if c in quote else c)
            continue
        escaped = True
    return "".join(out), escaped


def printable_path(path) -> str:
    """``path`` (str, bytes or PathLike; any value) as one printable line, whatever its bytes: bytes that are not
    UTF-8 are shown as ``\\xff`` escapes and control characters (a newline in a file name) as ``\\n``-style
    escapes, so a message naming the path stays one line and can always be encoded."""
    return _escaped(path)[0]


def shell_word(value) -> str:
    """``value`` as one word to paste into a POSIX shell: ``shlex.quote`` of a printable value, else bash's ``$'…'``
    with backslash escapes (still one line)."""
    shown, escaped = _escaped(value, quote="\\'")
    return f"$'{shown}'" if escaped else shlex.quote(printable_path(value))


def shell_join(words) -> str:
    """A command line of ``words``, each quoted by ``shell_word``."""
    return " ".join(shell_word(w) for w in words)


class _MessageFormatter(string.Formatter):
    """Every field on one printable line; ``{field:shell}`` quoted as one shell word."""

    def format_field(self, value, format_spec):
        if format_spec == "shell":
            return shell_word(value)
        if isinstance(value, (bytes, os.PathLike)):
            value = os.fsdecode(value)
        return printable_path(super().format_field(value, format_spec))


_FORMATTER = _MessageFormatter()


def message(code: str, /, **fields) -> str:
    """The text of ``MESSAGES[code]`` with ``fields`` (each on one printable line) and ``{program}`` filled in."""
    return _FORMATTER.format(MESSAGES[code], program=_program, **fields)



class JaxbigramError(Exception):
    """A failure with a one-line message that says what to do (exit code 2 at the command line)."""

    def __init__(self, code: str, /, **fields):
        self.code = code
        self.fields = fields
        super().__init__(message(code, **fields))


class UsageError(JaxbigramError, ValueError):
    """Bad input the user can fix: a flag, a config value, a data or prompt file (a ``ValueError``, as a Python
    caller of the library expects)."""


# the library API's argument errors (issue 26, the library API): what ``checks`` raises, "<function>: <argument> must
# be <what>, got <value>" (code ``api_argument``); a Python caller catches ValueError / TypeError, the CLI prints
# ``error: …`` and exits 2 as for any JaxbigramError
class ArgumentError(UsageError):
    """A library function called with a value it does not take (a ``ValueError``)."""


class ArgumentTypeError(JaxbigramError, TypeError):
    """A library function called with an argument of the wrong type (a ``TypeError``)."""


class CheckpointError(JaxbigramError):
    """A checkpoint that is missing, damaged, or belongs to another run."""


class DownloadError(JaxbigramError):
    """The dataset could not be downloaded (offline, or a bad payload)."""


class ResourceError(JaxbigramError):
    """A run that cannot fit in memory or in JAX's integer ranges."""


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM (after saving a checkpoint, if it had trained a step since the last one:
    ``saved``); ``exit_code`` is 128 + signal number."""

    def __init__(self, signum: int, step: int, path: str, saved: bool = True):
        self.signum, self.step, self.path, self.saved = signum, step, path, saved
        self.exit_code = 128 + signum
        super().__init__(f"interrupted at step {step}")

