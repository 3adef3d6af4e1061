"""Tiny transformers: a GPT-style decoder, a BERT-style masked-LM encoder, factorized embeddings, a frozen teacher."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from analyzer.trainer.config import TrainConfig


def fp16_round(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Emulates autocast on a GPU: the value (and, in backward, its gradient) is stored as float16, so overflow is real."""
    return x.to(torch.float16).to(x.dtype) if enabled else x


class Linear(nn.Linear):
    """nn.Linear whose output is rounded to float16 when the run emulates fp16 autocast."""

    fp16 = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp16_round(super().forward(x), self.fp16)


class FactorizedEmbedding(nn.Module):
    """The sum of K small tables indexed by the K base-b digits of a token id (seed 004's video-token embedding).

    Ids past the vocabulary (the MLM's [MASK]) have their own vector, as in 1X's genie, so the digits of the real
    tokens line up with those of a factorized language.
    """

    def __init__(self, vocab_size: int, k: int, n_embd: int, n_special: int = 0):
        super().__init__()
        self.base = math.ceil(vocab_size ** (1.0 / k) - 1e-9)
        self.tables = nn.ModuleList(nn.Embedding(self.base, n_embd) for _ in range(k))
        self.special = nn.Embedding(n_special, n_embd) if n_special else None
        self.register_buffer("powers", self.base ** torch.arange(k), persistent=False)
        self.vocab_size = vocab_size

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        digits = (idx.clamp_max(self.vocab_size - 1).unsqueeze(-1) // self.powers) % self.base
        emb = sum(table(digits[..., i]) for i, table in enumerate(self.tables))
        if self.special is None:
            return emb
        extra = idx >= self.vocab_size
        special = self.special((idx - self.vocab_size).clamp_min(0))
        return torch.where(extra.unsqueeze(-1), special, emb)

    def tied_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T for W the V x n_embd matrix the sum represents, built as an outer sum of the per-table scores
        x @ table_i.T over the digits (the same logits, without a V x n_embd matrix and its backward per forward)."""
        scores = [x @ table.weight.t() for table in self.tables]
        logits = scores[-1]  # the most significant digit first, so the flattened index is the token id
        for digit_scores in reversed(scores[:-1]):
            logits = (logits.unsqueeze(-1) + digit_scores.unsqueeze(-2)).flatten(-2)
        return logits[..., : self.vocab_size]


class Block(nn.Module):
    def __init__(self, cfg: TrainConfig, causal: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.qkv = Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = Linear(cfg.n_embd, cfg.n_embd)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.fc = Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.fc_proj = Linear(4 * cfg.n_embd, cfg.n_embd)
        self.n_head, self.causal, self.dropout = cfg.n_head, causal, cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x))))


class Transformer(nn.Module):
    """GPT (causal) or masked-LM encoder (bidirectional, with a [MASK] id); returns logits over the language's tokens."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        causal = cfg.model in ("gpt", "kd")
        n_inputs = cfg.vocab_size + (0 if causal else 1)  # the MLM's extra id is [MASK]
        if cfg.n_factorized_embeddings > 1:
            self.tok_emb = FactorizedEmbedding(cfg.vocab_size, cfg.n_factorized_embeddings, cfg.n_embd,
                                               n_special=n_inputs - cfg.vocab_size)
        else:
            self.tok_emb = nn.Embedding(n_inputs, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, causal) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.head = None if cfg.tie_embeddings else Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, Linear):
                m.fp16 = cfg.precision == "fp16"
        self._init_weights()

    def _init_weights(self) -> None:
        cfg = self.cfg
        for name, p in self.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                continue  # biases 0, LayerNorm 1/0: PyTorch's defaults
            std = cfg.init_std
            if name.startswith("tok_emb.tables") and cfg.scale_factorized_init:
                std = cfg.init_std / math.sqrt(cfg.n_factorized_embeddings)  # the sum of K tables keeps init_std
            if name.endswith("proj.weight"):
                std = cfg.init_std / math.sqrt(2 * cfg.n_layer)  # GPT-2: residual branches scaled by depth
            nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if self.head is not None:
            return self.head(x)
        if isinstance(self.tok_emb, FactorizedEmbedding):
            logits = self.tok_emb.tied_logits(x)
        else:
            logits = x @ self.tok_emb.weight[: self.cfg.vocab_size].t()
        return fp16_round(logits, self.cfg.precision == "fp16")


class BigramTeacher(nn.Module):
    """A frozen teacher that knows the language: its logits are log(P_true[next | current] + floor)."""

    def __init__(self, transition: torch.Tensor, floor: float):
        super().__init__()
        self.register_buffer("logits", torch.log(transition + floor).float(), persistent=False)
        self.requires_grad_(False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits[idx]
