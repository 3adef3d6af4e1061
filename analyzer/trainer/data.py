"""Generated training data: a sparse Markov-chain language with a known entropy, MLM masking and a fault injector."""

from __future__ import annotations

import math

import numpy as np
import torch

EVAL_STREAM = 1_000_003  # offsets the eval batches' seeds far away from any training step's


class MarkovLanguage:
    """Each token has `branching` successors with Dirichlet probabilities: the best causal LM loss is the entropy rate."""

    def __init__(self, vocab_size: int, branching: int, dirichlet_alpha: float, seed: int, stream: int = 0,
                 uniform: bool = False):
        rng = np.random.default_rng([seed, stream])
        self.vocab_size = vocab_size
        if uniform:  # P = sum_j w_j * permutation_j: doubly stochastic, so every token is equally frequent
            self.successors = np.stack([rng.permutation(vocab_size) for _ in range(branching)], axis=1)
            self.probs = np.tile(rng.dirichlet(np.full(branching, dirichlet_alpha)), (vocab_size, 1))
        else:
            self.successors = rng.integers(0, vocab_size, size=(vocab_size, branching))
            self.probs = rng.dirichlet(np.full(branching, dirichlet_alpha), size=vocab_size)
        self.cumulative = np.cumsum(self.probs, axis=1)
        self.cumulative[:, -1] = 1.0  # guards the sampler against cumsum's rounding
        self.stationary = self._stationary()

    def _stationary(self, iters: int = 200) -> np.ndarray:
        pi = np.full(self.vocab_size, 1.0 / self.vocab_size)
        for _ in range(iters):
            pi = np.bincount(self.successors.ravel(), weights=(pi[:, None] * self.probs).ravel(),
                             minlength=self.vocab_size)
        return pi / pi.sum()

    def transition_matrix(self) -> np.ndarray:
        """Dense P[next | current]; only for vocabularies small enough to hold V x V."""
        p = np.zeros((self.vocab_size, self.vocab_size))
        np.add.at(p, (np.arange(self.vocab_size)[:, None], self.successors), self.probs)
        return p

    def entropy_rate(self) -> float:
        """Nats per token: the loss a perfect causal LM reaches (duplicate successors merged)."""
        total = 0.0
        for i in np.flatnonzero(self.stationary > 1e-12):
            merged: dict[int, float] = {}
            for s, p in zip(self.successors[i], self.probs[i]):
                merged[int(s)] = merged.get(int(s), 0.0) + float(p)
            total += self.stationary[i] * -sum(p * math.log(p) for p in merged.values() if p > 0)
        return float(total)

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        x = np.empty((batch, length), dtype=np.int64)
        x[:, 0] = rng.choice(self.vocab_size, size=batch, p=self.stationary)
        for t in range(1, length):
            u = rng.random(batch)
            j = (u[:, None] > self.cumulative[x[:, t - 1]]).sum(axis=1)
            x[:, t] = self.successors[x[:, t - 1], j]
        return x


class FactorizedLanguage:
    """A factorized code (as video tokenizers emit): token = sum_i d_i * base^i, each digit its own Markov chain.

    A model whose embedding and tied head are sums over the same digits (seed 004's) can learn it; a plain Markov
    chain over a large vocabulary has no structure in digit space, so such a model stays near ln V whatever it does.
    Each digit chain is doubly stochastic, so all V tokens are equally frequent: the best loss without context is
    exactly ln V, and any loss below ln V means the model uses the context (the seed's "loss stays at ln V").
    """

    def __init__(self, vocab_size: int, factors: int, branching: int, dirichlet_alpha: float, seed: int):
        self.base = round(vocab_size ** (1.0 / factors))
        if self.base**factors != vocab_size:
            raise ValueError(f"vocab_size {vocab_size} is not a power of {factors} (language_factors={factors})")
        self.vocab_size = vocab_size
        self.digits = [MarkovLanguage(self.base, branching, dirichlet_alpha, seed, stream=i + 1, uniform=True)
                       for i in range(factors)]

    def entropy_rate(self) -> float:
        return sum(d.entropy_rate() for d in self.digits)

    def transition_matrix(self) -> np.ndarray:
        p = np.ones((1, 1))
        for d in reversed(self.digits):  # the most significant digit is the last: kron puts it first
            p = np.kron(p, d.transition_matrix())
        return p

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        return sum(d.sample(rng, batch, length) * self.base**i for i, d in enumerate(self.digits))


def make_language(vocab_size: int, factors: int, branching: int, dirichlet_alpha: float, seed: int):
    if factors > 1:
        return FactorizedLanguage(vocab_size, factors, branching, dirichlet_alpha, seed)
    return MarkovLanguage(vocab_size, branching, dirichlet_alpha, seed)


def batch_rng(seed: int, rank: int, step: int, micro: int) -> np.random.Generator:
    """One generator per (rank, step, micro-batch): any step's data is reproducible on its own."""
    return np.random.default_rng([seed, rank, step, micro])


def corrupt(x: np.ndarray, rng: np.random.Generator, vocab_size: int, n_sequences: int,
            kind: str = "uniform") -> np.ndarray:
    """The fault injector: the first n sequences become garbage, uniform random tokens or one token repeated.

    n is a count, not a share: the same bad documents are in the data whatever the batch size, so they fill a
    small batch and are diluted in a large one (a mean loss over 8 rows vs 32 rows: a quarter of the effect)."""
    x = x.copy()
    n = x.shape[0] if n_sequences <= 0 else min(n_sequences, x.shape[0])
    if kind == "repeat":  # a broken document: one token over and over, a different token per document
        x[:n] = rng.integers(0, vocab_size, size=(n, 1))
    else:
        x[:n] = rng.integers(0, vocab_size, size=(n, x.shape[1]))
    return x


def span_mask(rng: np.random.Generator, batch: int, length: int, probability: float, mean_span: float) -> np.ndarray:
    """Exactly floor(p * length) positions per sequence, chosen as geometric-length spans (as LTG-BERT does)."""
    target = int(probability * length)
    mask = np.zeros((batch, length), dtype=bool)
    for b in range(batch):
        count = 0
        while count < target:
            span = min(int(rng.geometric(1.0 / mean_span)), target - count)
            start = int(rng.integers(0, length))
            new = ~mask[b, start:start + span]
            mask[b, start:start + span] = True
            count += int(new.sum())
    return mask


def mlm_inputs(x: np.ndarray, rng: np.random.Generator, vocab_size: int, probability: float, mean_span: float,
               label_all: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Span masking with the 80/10/10 rule; labels are -100 off the mask unless label_all (seed 000's mistake)."""
    mask_id = vocab_size  # one id past the language's tokens
    mask = span_mask(rng, *x.shape, probability, mean_span)
    roll = rng.random(x.shape)
    inputs = x.copy()
    inputs[mask & (roll < 0.8)] = mask_id
    swap = mask & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = rng.integers(0, vocab_size, size=int(swap.sum()))
    labels = x.copy() if label_all else np.where(mask, x, -100)  # label_all: labels = input_ids.clone()
    return torch.from_numpy(inputs), torch.from_numpy(labels)
