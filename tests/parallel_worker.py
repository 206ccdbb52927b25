"""Run in a subprocess by test_parallel.py, with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.

``python tests/parallel_worker.py CONFIG DATA WORKDIR OUT.npz``: for meshes over the first 1, 2, 4 and 8 devices,
the per-step losses and final params of the fused ``train_chunk`` calls (same global batch, same keys) and the
layout of one batch; then the ``fit`` driver on all 8 devices (eval history, checkpoints, final params).
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a subprocess: conftest.py does not run here

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxbigram import config, data, models, parallel, train  # noqa: E402
from jaxbigram.checkpoint import Store  # noqa: E402
from jaxbigram.models.bigram import logits_table  # noqa: E402

DEVICE_COUNTS = (1, 2, 4, 8)


def chunked_run(cfg, train_np, vocab, devices):
    """What fit does, on a mesh over ``devices``: returns (per-step losses, final table, one batch, rows per shard)."""
    tcfg = cfg.train
    dp = parallel.DataParallel.create(tcfg.batch_size, devices=devices)
    keys = dp.replicate(train.run_keys(tcfg.seed))
    train_key = keys["batch"]
    model = models.build(cfg.model, vocab, tcfg.block_size)
    state = dp.replicate(train.create_train_state(keys["init"], model, tcfg))
    train_data = dp.replicate(train_np)
    sizes = dict(batch_size=tcfg.batch_size, block_size=tcfg.block_size)
    batch_fn = jax.jit(lambda key, d: parallel.constrain_batch(*data.get_batch(key, d, **sizes), dp.batch_sharding))
    x, _ = batch_fn(train_key, train_data)
    rows = sorted({s.data.shape[0] for s in x.addressable_shards})
    losses = []
    for _ in range(tcfg.steps // tcfg.steps_per_call):
        state, chunk = train.train_chunk(state, train_data, train_key, keys["dropout"], tcfg.steps_per_call,
                                         max_steps=tcfg.steps_per_call, sharding=dp.batch_sharding, **sizes)
        losses.append(np.asarray(chunk))
    return np.concatenate(losses), np.asarray(logits_table(state.params)), np.asarray(x), np.asarray(rows)


def main(cfg_path, data_path, workdir, out_path):
    cfg = config.load(cfg_path)
    corpus = data.load_corpus(data_path)
    train_np, _ = data.split(corpus.ids, cfg.data.val_fraction)
    out = {}
    for n in DEVICE_COUNTS:
        losses, table, batch, rows = chunked_run(cfg, train_np, corpus.tokenizer.vocab_size, jax.devices()[:n])
        out.update({f"losses{n}": losses, f"params{n}": table, f"batch{n}": batch, f"rows{n}": rows})
    os.makedirs(workdir, exist_ok=True)  # fit writes metrics.jsonl into an existing workdir
    every = config.load(cfg_path, [f"train.devices={jax.device_count()}"])  # a bigram keeps 1 CPU device unless told
    with open(os.devnull, "w") as quiet:
        result = train.fit(every, corpus, Store(workdir), fresh=True, out=quiet, err=quiet)
    np.savez(out_path, devices=jax.device_count(), fit_params=np.asarray(logits_table(result.state.params)),
             history=np.asarray([[h["step"], h["train_loss"], h["val_loss"]] for h in result.history]),
             val_loss=result.report["val_loss"], **out)


def fit_only(cfg_path, data_path, workdir, out_path):
    """``fit`` on every device of this process (any model): its final params, flattened, and its eval history."""
    cfg = config.load(cfg_path, [f"train.devices={jax.device_count()}"])
    os.makedirs(workdir, exist_ok=True)
    with open(os.devnull, "w") as quiet:
        result = train.fit(cfg, data.load_corpus(data_path), Store(workdir), fresh=True, out=quiet, err=quiet)
    leaves = [np.asarray(leaf).ravel() for leaf in jax.tree_util.tree_leaves(result.state.params)]
    np.savez(out_path, devices=jax.device_count(), params=np.concatenate(leaves),
             history=np.asarray([[h["step"], h["train_loss"], h["val_loss"]] for h in result.history]))


if __name__ == "__main__":
    if sys.argv[1] == "--fit":  # python tests/parallel_worker.py --fit CONFIG DATA WORKDIR OUT.npz
        fit_only(*sys.argv[2:6])
    else:
        main(*sys.argv[1:5])
