"""A synthetic UTF-8 corpus with as many distinct characters as asked, for benchmarks and scaling tests.

The text is a sparse Markov chain over ``vocab`` characters drawn from many scripts: ASCII, accented Latin, Greek,
Cyrillic, kana, Hangul, CJK ideographs and emoji (1- to 4-byte UTF-8), with line ends that mix ``\\n`` and
``\\r\\n``. Each character has a few likely successors (mostly from its own script), so a bigram model has something
to learn. Fully vectorised (many chains walked in parallel) and written in chunks, so 100 MB takes seconds and
bounded memory. Deterministic for a given (seed, size, vocab).
"""

from __future__ import annotations

import numpy as np

# (first, last) code points, inclusive; the order is the order in which the pool is filled
BLOCKS = [
    (0x20, 0x7E),  # ASCII printable
    (0xC0, 0x17F),  # Latin-1 letters with accents, Latin Extended-A
    (0x391, 0x3C9),  # Greek
    (0x410, 0x44F),  # Cyrillic
    (0x3041, 0x3096),  # Hiragana
    (0x30A1, 0x30FA),  # Katakana
    (0x1F300, 0x1F5FF),  # emoji: symbols and pictographs (4-byte UTF-8)
    (0x1F600, 0x1F64F),  # emoji: faces
    (0xAC00, 0xAD9F),  # Hangul syllables (a slice)
    (0x4E00, 0x9FFF),  # CJK unified ideographs: fills the rest
]
EXCLUDED = {0xD7, 0xF7}  # × and ÷ sit inside the Latin-1 letters
NEWLINE = 0x0A
SUCCESSORS = 24  # likely next characters per character


def character_pool(vocab: int) -> np.ndarray:
    """``vocab`` distinct code points, sorted: '\n', ' ', then characters taken round-robin from every block above
    (so even a few hundred characters mix all scripts; big vocabularies are mostly CJK)."""
    blocks = [[c for c in range(first, last + 1) if c not in EXCLUDED and c != 0x20] for first, last in BLOCKS]
    total = sum(map(len, blocks)) + 2
    if not 2 <= vocab <= total:
        raise ValueError(f"vocab must be between 2 and {total}")
    pool, depth = [NEWLINE, 0x20], 0
    while len(pool) < vocab:
        for block in blocks:
            if depth < len(block) and len(pool) < vocab:
                pool.append(block[depth])
        depth += 1
    return np.sort(np.asarray(pool, dtype=np.uint32))


def transition_tables(vocab: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``succ (V, K)``: each state's likely successors; ``cum (K,)``: their shared Zipf CDF.

    Successors are mostly nearby states (same script), plus the space and the line end as common hubs.
    """
    near = rng.geometric(0.02, size=(vocab, SUCCESSORS)) * rng.choice([-1, 1], size=(vocab, SUCCESSORS))
    succ = (np.arange(vocab)[:, None] + near) % vocab
    space = 1  # pool[1] is ' '
    succ[:, 1] = space
    succ[:, 5] = 0  # the line end
    succ[space, :] = rng.integers(1, vocab, size=SUCCESSORS)  # after a space: anything
    succ[0, :] = rng.integers(1, vocab, size=SUCCESSORS)  # after a line end: anything
    weights = 1.0 / np.arange(1, SUCCESSORS + 1) ** 1.1
    return succ.astype(np.int64), np.cumsum(weights / weights.sum())


def walk(succ: np.ndarray, cum: np.ndarray, start: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """``(chains, length)`` states of ``len(start)`` independent chains walked in parallel."""
    out = np.empty((len(start), length), dtype=np.int64)
    state = start
    for t in range(length):
        state = succ[state, np.minimum(np.searchsorted(cum, rng.random(len(state))), len(cum) - 1)]
        out[:, t] = state
    return out


def chunk_text(states: np.ndarray, pool: np.ndarray, rng: np.random.Generator, crlf: float) -> str:
    """States → text: one line per chain row (plus the chain's own line ends); a fraction ``crlf`` of the line ends
    are written '\\r\\n'."""
    cps = np.concatenate([pool[states], np.full((len(states), 1), NEWLINE, dtype=np.uint32)], axis=1).reshape(-1)
    ends = np.flatnonzero(cps == NEWLINE)
    crlf_at = ends[rng.random(len(ends)) < crlf]
    cps = np.insert(cps, crlf_at, np.uint32(0x0D))
    return cps.astype("<u4").tobytes().decode("utf-32-le")


def make_corpus(path: str, size_bytes: int, vocab: int, seed: int = 0, chains: int = 4096, length: int = 512,
                crlf: float = 0.3) -> dict:
    """Write at least ``size_bytes`` of UTF-8 text to ``path``; returns statistics of what was written."""
    rng = np.random.default_rng(seed)
    pool = character_pool(vocab)
    succ, cum = transition_tables(vocab, rng)
    written, chars, seen, has_cr = 0, 0, np.zeros(vocab, dtype=bool), False
    state = rng.integers(0, vocab, size=chains)
    with open(path, "wb") as f:
        while written < size_bytes:
            states = walk(succ, cum, state, length, rng)
            state = states[:, -1]
            text = chunk_text(states, pool, rng, crlf)
            payload = text.encode("utf-8")
            if written + len(payload) > size_bytes:  # end on a whole line near the target size
                cut = payload.rfind(b"\n", 0, size_bytes - written)  # 0x0A never occurs inside a multi-byte char
                if cut < 0:
                    break
                payload = payload[: cut + 1]
                text = payload.decode("utf-8")
                states = states.reshape(-1)[: len(text)]  # an upper bound on the states used, for the count
            f.write(payload)
            written += len(payload)
            chars += len(text)
            seen[np.unique(states)] = True
            has_cr = has_cr or "\r" in text
    return {"path": path, "bytes": written, "characters": chars, "distinct_characters": int(seen.sum()) + has_cr,
            "vocab_pool": vocab, "seed": seed}
