"""The lecture's bigram.py in JAX, Flax and optax, line for line, importing nothing from jaxbigram (docs/lecture.md)."""
import argparse
import os
import sys
from functools import partial

import flax.linen as nn  # plays torch.nn's part (Module, Embed); optax and jax.nn play torch.nn.functional's (F)
import jax
import jax.numpy as jnp
import numpy as np
import optax  # plays torch.optim's part

# hyperparameters
batch_size = 32  # how many independent sequences will we process in parallel?
block_size = 8  # what is the maximum context length for predictions?
max_iters = 3000
eval_interval = 300
learning_rate = 1e-2
eval_iters = 200
seed = 1337  # torch.manual_seed(1337) seeds a hidden global generator; JAX has none: main makes keys from this
# ------------

@jax.jit  # why jit: compiled once into one XLA program, rather than run op by op from Python at every call
def get_batch(data, key):
    # generate a small batch of inputs x and targets y (the lecture picks the split from globals: here it is passed)
    ix = jax.random.randint(key, (batch_size,), 0, len(data) - block_size)  # torch.randint(len(data) - block_size)
    offsets = ix[:, None] + jnp.arange(block_size)  # torch.stack of the windows, as one gather
    return data[offsets], data[offsets + 1]

class BigramLanguageModel(nn.Module):  # a Flax Module holds no parameters: model.init makes them, apply uses them
    vocab_size: int  # a Module is a dataclass: __init__ and super().__init__() are written for us

    def setup(self):
        # each token directly reads off the logits for the next token from a lookup table (N(0, 1), as nn.Embedding)
        self.token_embedding_table = nn.Embed(self.vocab_size, self.vocab_size,
                                              embedding_init=nn.initializers.normal(1.0))

    def __call__(self, idx, targets=None):  # forward: model.apply({"params": p}, xb, yb) calls it, as m(xb, yb) does
        # idx and targets are both (B,T) arrays of integers
        logits = self.token_embedding_table(idx)  # (B,T,C)
        if targets is None:
            loss = None
        else:
            B, T, C = logits.shape
            logits = logits.reshape(B * T, C)  # .view(B*T, C)
            targets = targets.reshape(B * T)  # shape (B*T,): one integer class label per row, not one-hot rows
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()  # F.cross_entropy
        return logits, loss

    def generate(self, idx, max_new_tokens, key):  # the key: JAX's random draws take it explicitly
        # idx is (B, T) array of indices in the current context
        for _ in range(max_new_tokens):
            # get the predictions
            logits, loss = self(idx)
            # focus only on the last time step
            logits = logits[:, -1, :]  # becomes (B, C)
            # apply softmax to get probabilities
            probs = jax.nn.softmax(logits, axis=-1)  # (B, C)
            # sample from the distribution (torch.multinomial); a fresh subkey per draw, or each draw would repeat
            key, subkey = jax.random.split(key)
            idx_next = jax.random.categorical(subkey, jnp.log(probs), axis=-1)[:, None]  # (B, 1)
            # append sampled index to the running sequence
            idx = jnp.concatenate((idx, idx_next), axis=1)  # (B, T+1)
        return idx

@partial(jax.jit, static_argnums=(0, 4))
def estimate_loss(model, params, train_data, val_data, eval_iters, key):
    # no @torch.no_grad() or model.eval(): JAX computes gradients only inside jax.grad, and a bigram has no dropout
    out = {}
    for split, data, split_key in zip(["train", "val"], [train_data, val_data], jax.random.split(key)):
        keys = jax.random.split(split_key, eval_iters)
        losses = jax.vmap(lambda k: model.apply({"params": params}, *get_batch(data, k))[1])(keys)  # all at once
        out[split] = losses.mean()
    return out

@partial(jax.jit, static_argnums=(0, 1))
def train_step(model, optimizer, params, opt_state, xb, yb):
    # no zero_grad: gradients are values that value_and_grad returns, not buffers accumulating in the parameters
    loss, grads = jax.value_and_grad(lambda p: model.apply({"params": p}, xb, yb)[1])(params)  # loss.backward()
    updates, opt_state = optimizer.update(grads, opt_state, params)  # optimizer.step(), as values: nothing mutates
    return optax.apply_updates(params, updates), opt_state, loss

def fail(message):  # bad input: one line on stderr that says what to pass, and exit code 2
    print(f"error: {message}", file=sys.stderr)
    return 2

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m jaxbigram.lecture", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the text to train on (default: $JAXBIGRAM_DATA, else ./input.txt)")
    for knob, default in [("--max-iters", max_iters), ("--eval-interval", eval_interval), ("--eval-iters", eval_iters),
                          ("--max-new-tokens", 500)]:  # test and teaching knobs (fewer steps); the lecture's defaults
        parser.add_argument(knob, type=int, default=default)
    args = parser.parse_args(argv)
    if min(args.max_iters, args.max_new_tokens) < 0 or min(args.eval_interval, args.eval_iters) < 1:
        return fail("pass --eval-interval and --eval-iters of 1 or more, --max-iters and --max-new-tokens 0 or more")
    # wget https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
    path = args.data or os.environ.get("JAXBIGRAM_DATA") or "input.txt"  # as the library finds its text
    try:
        with open(path, 'r', encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        return fail(f"cannot read {path!r} ({type(e).__name__}): pass --data PATH to a UTF-8 text such as "
                    f"tinyshakespeare's input.txt, or set JAXBIGRAM_DATA")
    # here are all the unique characters that occur in this text
    chars = sorted(list(set(text)))
    vocab_size = len(chars)
    # create a mapping from characters to integers
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    encode = lambda s: [stoi[c] for c in s]  # encoder: take a string, output a list of integers
    decode = lambda l: ''.join([itos[i] for i in l])  # decoder: take a list of integers, output a string
    # Train and test splits (int32 in torch.long's role: JAX's integers are 32-bit by default)
    data = jnp.asarray(np.array(encode(text), dtype=np.int32))  # through numpy: jnp.array of a long list is slow
    n = int(0.9 * len(data))  # first 90% will be train, rest val
    train_data, val_data = data[:n], data[n:]
    if len(val_data) <= block_size:
        return fail(f"{path!r} has {len(text)} characters: pass --data PATH to a longer text")
    # the keys torch.manual_seed hides, split as the library's run_keys does, so the two runs compare step for step
    key = jax.random.key(seed)
    init_key, batch_key, eval_key = jax.random.split(key, 3)
    sample_key = jax.random.fold_in(key, 4)
    model = BigramLanguageModel(vocab_size)
    params = model.init(init_key, jnp.zeros((1, 1), jnp.int32))["params"]  # the (vocab_size, vocab_size) table
    # create an optax optimizer: weight_decay=0.01 is torch.optim.AdamW's default (optax's is 1e-4)
    optimizer = optax.adamw(learning_rate, weight_decay=0.01)
    opt_state = optimizer.init(params)  # Adam's moments live here, outside the parameters
    for iter in range(args.max_iters + 1):  # + 1: one estimate more than the lecture, of the model that generates
        # every once in a while evaluate the loss on train and val sets
        if iter % args.eval_interval == 0 or iter == args.max_iters:
            losses = estimate_loss(model, params, train_data, val_data, args.eval_iters,
                                   jax.random.fold_in(eval_key, iter))  # step iter's own eval key
            print(f"step {iter}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if iter == args.max_iters:
            break
        # sample a batch of data (step iter's own key: the run is a function of the seed)
        xb, yb = get_batch(train_data, jax.random.fold_in(batch_key, iter))
        # evaluate the loss, its gradient, and update the parameters: one compiled call
        params, opt_state, loss = train_step(model, optimizer, params, opt_state, xb, yb)
    # generate from the model, a character at a time: m.generate on a growing idx would compile once per length
    generate = jax.jit(partial(model.apply, method=BigramLanguageModel.generate), static_argnums=2)
    context, out = jnp.zeros((1, 1), dtype=jnp.int32), [0]
    for i in range(args.max_new_tokens):
        context = generate({"params": params}, context, 1, jax.random.fold_in(sample_key, i))[:, -1:]  # (1, 1)
        out.append(int(context[0, 0]))
    print(decode(out))
    return 0

if __name__ == "__main__":
    sys.exit(main())
