"""Data parallelism on a ``jax.sharding.Mesh``, and multi-process (multi-host) start-up with ``jax.distributed``.

The layout, in JAX's own terms:

* one mesh axis, ``data``, over every device of every process (``jax.devices()``);
* the global batch of each step is sharded along ``data`` (``NamedSharding(mesh, P('data'))``): the batch is drawn
  inside the compiled step from ``fold_in(base_key, step)`` exactly as on one device, and a sharding constraint on
  ``(x, y)`` makes each device gather only its own rows; the loss and the gradient are then all-reduced by XLA;
* the parameters, the AdamW state and the token ids are replicated (``NamedSharding(mesh, P())``).

Replicating the ``(V, V)`` table is the right choice while 3 copies of it (params, AdamW ``mu`` and ``nu``) plus a
gradient fit on every device: each step touches only ``B·T`` rows, and replication costs one all-reduce of the
gradient and no other communication. For a vocabulary large enough that ``4·V²·4`` bytes crowd a device, shard the
table and its optimizer state along the rows (``P('data', None)``): the same code works with that sharding, at
the price of an all-gather of the rows a batch needs.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import traceback
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .errors import UsageError, message

DATA_AXIS = "data"


# ----------------------------------------------------------------------------- processes

def check_coordinator(address: str) -> None:
    """``HOST:PORT`` with a port in 1..65535 (IPv6 hosts in brackets: ``[::1]:1234``); one line otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or host in ("[", "[]"):
        raise UsageError("coordinator_address", got=address)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, timeout_s: int = 300) -> None:
    """``jax.distributed.initialize``: explicit values, else JAX's detection of the cluster (SLURM, Open MPI, TPU pod
    slices, Kubernetes; ``JAX_COORDINATOR_ADDRESS`` is read by JAX itself). Call before any JAX computation.

    Every process must join within ``timeout_s`` seconds, else one line says how many were expected."""
    if coordinator is not None:
        check_coordinator(coordinator)
    if process_id is not None and num_processes is not None and process_id >= num_processes:
        raise UsageError("process_id_range", got=process_id, n=num_processes)
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
    except (AttributeError, ValueError):  # older or newer JAX without the option: its default applies
        pass
    # When a process never joins, JAX's C++ client aborts the whole process with a stack trace at its deadline. So
    # ours comes first: a watchdog prints the one-line error and exits 2; JAX's deadline is set later than ours.
    line = "error: " + message("distributed_timeout", timeout=timeout_s, n=num_processes or "all",
                               me=process_id if process_id is not None else "?",
                               reason=f"coordinator {coordinator or 'detected from the cluster'}") + "\n"
    watchdog = threading.Timer(timeout_s, lambda: (os.write(2, line.encode("utf-8", "replace")), os._exit(2)))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s + 60)
    except Exception as e:  # jaxlib raises its own runtime error types
        raise UsageError("distributed_init", reason=str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                         ) from None
    finally:
        watchdog.cancel()


def is_primary() -> bool:
    """True on the process that prints and writes metadata (process 0; always true without ``jax.distributed``)."""
    return jax.process_index() == 0


def silence_non_primary() -> None:
    """On every process but the primary, send stdout and stderr (Python's and the C++ libraries') to /dev/null;
    uncaught errors still reach the original stderr, prefixed with the process index. On the primary, the C++
    libraries' stdout goes to stderr (``results_only_on_stdout``)."""
    if is_primary():
        results_only_on_stdout()
        return
    index = jax.process_index()
    real_err = os.fdopen(os.dup(2), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(devnull, 1), os.dup2(devnull, 2)

    def hook(kind, value, tb):
        real_err.write(f"[process {index}] " + "".join(traceback.format_exception(kind, value, tb)))
        real_err.flush()

    sys.excepthook = hook


def results_only_on_stdout() -> None:
    """Keep stdout for results: file descriptor 1 (where C++ libraries print) becomes stderr, and Python's
    ``sys.stdout`` keeps the original stdout. Gloo, JAX's cross-process CPU collectives, prints "[Gloo] Rank 0 is
    connected to 1 peer ranks. …" with ``std::cout`` each time it connects a group of devices, with no switch to
    turn it off."""
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = io.TextIOWrapper(os.fdopen(stdout, "wb"), encoding=sys.stdout.encoding, errors=sys.stdout.errors,
                                  line_buffering=sys.stdout.line_buffering)


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------- the mesh

# a training step of at least this many FLOPs runs faster split over 2 CPU devices than on one (measured on the
# 2-core machine: see docs/performance.md)
CPU_SPLIT_MIN_FLOPS = 1e8


def split_on_cpu(model, batch_size: int) -> bool:
    """Whether ``model``'s training step at ``batch_size`` is worth splitting over several CPU devices: a GPT whose
    step (``6 · params · tokens`` FLOPs) reaches ``CPU_SPLIT_MIN_FLOPS`` (XLA runs a small matmul on about one core,
    two devices use two; for a tiny step the all-reduce costs more than it saves). Never the bigram: a step of
    microseconds, and a lookup rather than a matmul."""
    if model.kind != "gpt":
        return False
    return 6.0 * model.param_count() * batch_size * model.block_size >= CPU_SPLIT_MIN_FLOPS


def select_devices(requested: int, batch_size: int, split_on_cpu: bool, devices=None, backend: str | None = None
                   ) -> list:
    """The devices a run splits its batches over (``train.devices``): the first ``requested`` of ``jax.devices()``,
    or with 0 (automatic) every device, except on the CPU: there a model whose step is too small to gain from a split
    (``split_on_cpu`` False: the bigram, a tiny GPT) keeps one device per process, and a model that gains (a GPT of
    some size: XLA runs its small matmuls on about one core, so two devices use both cores of a 2-core machine)
    takes every CPU device when the batch divides evenly over them, else one per process. ``devices`` and
    ``backend`` default to JAX's."""
    devices = list(jax.devices() if devices is None else devices)
    backend = jax.default_backend() if backend is None else backend
    if requested:
        if requested > len(devices):
            raise UsageError("devices_unavailable", requested=requested, available=len(devices))
        return devices[:requested]
    if backend != "cpu" or (split_on_cpu and batch_size % len(devices) == 0):
        return devices
    first = {}
    for device in devices:
        first.setdefault(device.process_index, device)
    return list(first.values())


@dataclass(frozen=True)
class DataParallel:
    """A 1-D ``data`` mesh and the shardings of a data-parallel run."""

    mesh: Mesh

    @classmethod
    def create(cls, batch_size: int, devices=None) -> "DataParallel":
        """A mesh over ``devices`` (default: all devices of all processes); the batch must split evenly over them."""
        devices = list(jax.devices() if devices is None else devices)
        if batch_size % len(devices):
            raise UsageError("batch_devices", batch=batch_size, devices=len(devices))
        return cls(Mesh(np.array(devices), (DATA_AXIS,)))

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def local_device_count(self) -> int:
        """Devices of the mesh that belong to this process."""
        return sum(d.process_index == jax.process_index() for d in self.mesh.devices.flat)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch_sharding(self) -> NamedSharding | None:
        """How ``(B, T)`` batches are laid out: rows split along ``data``; None on one device (nothing to split)."""
        return NamedSharding(self.mesh, P(DATA_AXIS)) if self.num_devices > 1 else None

    def abstract(self, fn):
        """What ``fn()`` would return, as shapes and dtypes laid out replicated on the mesh, without computing or
        allocating it (``jax.eval_shape``): the target to restore a checkpoint into."""
        return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated),
                                      jax.eval_shape(fn))

    def replicate(self, tree):
        """Every array leaf of ``tree`` (params, optimizer state, PRNG keys, token ids) as one global array
        replicated on the mesh. Each process supplies its own devices' copies, so this works across hosts; every
        process must pass the same values."""
        return jax.tree_util.tree_map(self._replicate_leaf, tree)

    def _replicate_leaf(self, leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding == self.replicated:
            return leaf
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(leaf)
            return jax.random.wrap_key_data(self._replicate_leaf(jax.random.key_data(leaf)), impl=impl)
        if jax.process_count() == 1:  # no copy when the leaf already sits on the one device of the mesh
            return jax.device_put(leaf, self.replicated)
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, self.replicated, lambda index: host[index])


def local_copy(tree):
    """This process's copy of a pytree replicated over several processes (arrays it cannot address whole become their
    first local shard); anything else is returned as it is."""
    return jax.tree.map(
        lambda a: a.addressable_data(0) if isinstance(a, jax.Array) and not a.is_fully_addressable else a, tree)


def is_abstract(tree) -> bool:
    """True if ``tree`` holds shapes (``jax.ShapeDtypeStruct``) rather than arrays."""
    return any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree_util.tree_leaves(tree))


def stacked(sharding):
    """The layout of a stack of batches (a leading steps axis, unsplit) whose batches are laid out as ``sharding``."""
    if sharding is None:
        return None
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec))


def constrain_batch(x, y, sharding):
    """Inside jit: lay ``(x, y)`` out as ``sharding`` (each device keeps its rows of the global batch); no-op for
    None."""
    if sharding is None:
        return x, y
    return jax.lax.with_sharding_constraint((x, y), (sharding, sharding))
