"""The PyTorch reference ``bench --against torch`` runs: the lecture's bigram loop and its GPT, written here from the
lecture's published design (``bigram.py``, ``gpt.py``) with nanoGPT's training loop, at a jaxbigram preset's sizes.

Run as its own process (``python -m jaxbigram.bench.torch_ref CONFIG_JSON DATA WORKDIR``): it imports torch and never
JAX, reads the text with plain Python, trains exactly the schedule of the config (same batches per step, iterations,
optimizer, clipping, eval cadence, checkpoint cadence, and the GPT's exact val pass at the end) and prints one JSON
line: per-interval step rates, the last estimate and the exact val loss. Only the bench imports it; training never
does.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


def read_ids(path: str):
    """The text's ids over its sorted characters (a BOM at the start is not a character), as jaxbigram reads it."""
    import torch

    text = Path(path).read_text(encoding="utf-8")
    text = text[1:] if text.startswith("\ufeff") else text
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return torch.tensor([index[c] for c in text], dtype=torch.long), len(chars)


def lr_at(step: int, t: dict) -> float:
    """jaxbigram's schedule (optax ``warmup_cosine_decay_schedule`` / linear warmup then constant)."""
    peak, warmup, steps = t["learning_rate"], t["warmup_steps"], t["steps"]
    if t["lr_schedule"] == "cosine":
        if warmup and step < warmup:
            return peak * step / warmup
        decay = max(steps, warmup + 1) - warmup
        progress = min(max(step - warmup, 0), decay) / decay
        end = peak * t["min_lr_ratio"]
        return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * progress))
    if warmup and step < warmup:
        return peak * step / warmup
    return peak


def build_gpt(m: dict, vocab: int, block: int):
    """The lecture's GPT with nanoGPT's init: fused q/k/v, pre-LayerNorm blocks, ReLU MLP 4x wide, untied head."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    c, h, p, bias = m["n_embd"], m["n_head"], m["dropout"], m["bias"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(c, bias=bias), nn.LayerNorm(c, bias=bias)
            self.qkv, self.proj = nn.Linear(c, 3 * c, bias=bias), nn.Linear(c, c, bias=bias)
            self.fc, self.fc_proj = nn.Linear(c, 4 * c, bias=bias), nn.Linear(4 * c, c, bias=bias)
            self.drop = nn.Dropout(p)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
            q, k, v = (z.view(b, t, h, c // h).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p if self.training else 0.0, is_causal=True)
            x = x + self.drop(self.proj(y.transpose(1, 2).contiguous().view(b, t, c)))
            return x + self.drop(self.fc_proj(F.relu(self.fc(self.ln2(x)))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, c), nn.Embedding(block, c)
            self.drop = nn.Dropout(p)
            self.blocks = nn.ModuleList(Block() for _ in range(m["n_layer"]))
            self.ln_f = nn.LayerNorm(c, bias=bias)
            self.head = nn.Linear(c, vocab, bias=bias)
            for name, param in self.named_parameters():
                if param.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * m["n_layer"]) if name.endswith(("proj.weight",)) else 0.02
                    torch.nn.init.normal_(param, 0.0, std)
                elif name.endswith("bias") and "ln" not in name:
                    torch.nn.init.zeros_(param)

        def forward(self, idx, targets):
            t = idx.shape[1]
            x = self.drop(self.wte(idx) + self.wpe(torch.arange(t)))
            for blk in self.blocks:
                x = blk(x)
            logits = self.head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction="none").view(
                targets.shape)

    return GPT()


def build_bigram(vocab: int):
    """The lecture's ``BigramLanguageModel``: an ``nn.Embedding(V, V)`` read as next-character logits."""
    from torch import nn
    from torch.nn import functional as F

    class Bigram(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(vocab, vocab)

        def forward(self, idx, targets):
            logits = self.table(idx)
            b, t, v = logits.shape
            return F.cross_entropy(logits.view(b * t, v), targets.view(b * t), reduction="none").view(b, t)

    return Bigram()


def exact_val(model, ids, block: int, windows: int = 64) -> float:
    """jaxbigram's exact split loss: consecutive windows of ``block`` ids, each position predicting the next."""
    import torch

    n_pred = len(ids) - 1
    total = 0.0
    with torch.no_grad():
        span = windows * block
        for start in range(0, n_pred, span):
            chunk = ids[start:min(start + span + 1, len(ids))]
            n = len(chunk) - 1
            full = n // block * block
            if full:
                total += float(model(chunk[:full].view(-1, block), chunk[1:full + 1].view(-1, block)).sum())
            if n > full:
                total += float(model(chunk[full:n].view(1, -1), chunk[full + 1:n + 1].view(1, -1)).sum())
    return total / n_pred


def train(cfg: dict, data: str, workdir: str) -> dict:
    """Train as nanoGPT's ``train.py`` does, with the config's sizes and cadence; returns what the bench reports."""
    import torch

    t, e = cfg["train"], cfg["eval"]
    torch.manual_seed(t["seed"])
    ids, vocab = read_ids(data)
    n = int(len(ids) * (1 - cfg["data"]["val_fraction"]))
    splits = {"train": ids[:n], "val": ids[n:]}
    batch, block = t["batch_size"], t["block_size"]
    gpt = cfg["model"]["kind"] == "gpt"
    model = build_gpt(cfg["model"], vocab, block) if gpt else build_bigram(vocab)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = ([{"params": [p for p in params if p.dim() >= 2], "weight_decay": t["weight_decay"]},
               {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
              if gpt else [{"params": params, "weight_decay": t["weight_decay"]}])
    optimizer = torch.optim.AdamW(groups, lr=t["learning_rate"], betas=(t["beta1"], t["beta2"]))

    def get_batch(split):
        d = splits[split]
        ix = torch.randint(len(d) - block, (batch,))
        return torch.stack([d[i:i + block] for i in ix]), torch.stack([d[i + 1:i + block + 1] for i in ix])

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {s: float(torch.stack([model(*get_batch(s)).mean() for _ in range(e["iters"])]).mean())
               for s in ("train", "val")}
        model.train()
        return out

    rates, last, steps = [], None, t["steps"]
    interval_steps, step_s = 0, 0.0
    for it in range(steps + 1):
        if it % e["interval"] == 0 or it == steps:
            if interval_steps:
                rates.append(interval_steps / step_s)
            interval_steps, step_s = 0, 0.0
            last = estimate_loss()
        if it > 0 and (it % cfg["checkpoint"]["interval"] == 0 or it == steps):
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": it},
                       Path(workdir) / "ckpt.pt")
        if it == steps:
            break
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, t)
        x, y = get_batch("train")
        loss = model(x, y).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        optimizer.step()
        step_s += time.perf_counter() - t0
        interval_steps += 1
    model.eval()
    val = exact_val(model, splits["val"], block) if gpt else None
    return {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads(), "interval_steps_per_s": rates,
            "train_loss": last["train"], "val_loss": last["val"], "exact_val_loss": val}


def main(argv: list[str]) -> int:
    config_json, data, workdir = argv
    print(json.dumps(train(json.loads(Path(config_json).read_text()), data, workdir)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
