"""GPT2: Garg et al. (2022)'s GPT-2-style causal transformer, in plain torch.

The prompt ``(x_1, y_1, ..., x_N, y_N, x_q)`` becomes 2N + 1 tokens in R^d (a y token is
``(y, 0, ..., 0)``), read in linearly to width D, plus learned positions:
``h_0 = W_in z_t + b_in + p_t``. Each of the L pre-LayerNorm blocks computes

    h <- h + Attn(LN_1(h)),   Attn = causal multi-head softmax attention (H heads),
    h <- h + W_2 gelu(W_1 LN_2(h) + b_1) + b_2,   gelu with the tanh approximation (GPT-2's),

and the read-out ``f = w_out^T LN_f(h) + b_out`` at every x token is the prediction for that x
after the points before it (causal attention: a prefix of k points sees only them). Layer
names follow Hugging Face's ``GPT2Model`` (``c_attn``, ``c_proj``, ``c_fc``, ``ln_1``, ...)
with ``nn.Linear`` weights (its ``Conv1D`` stores their transpose), and GPT-2's
initialisation (normal 0.02; the residual projections 0.02 / sqrt(2L)); read-in and read-out
are ``nn.Linear``'s default, as in Garg et al.'s ``TransformerModel``.
``scripts/check_gpt2_against_hf.py`` checks equal outputs with the same weights. On the CPU the
blocks' products, attention and GELU take :mod:`~icl_lightning.models.gpt2_cpu`'s fast path
(oneDNN products and C kernels for the same function), torch's ops elsewhere.

Garg et al.'s sizes (``configs/garg_{tiny,small,standard}.yaml``): tiny L = 3, D = 64, H = 2;
small L = 6, D = 128, H = 4; standard L = 12, D = 256, H = 8.
"""

import math

import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveInt
from torch import nn

from icl_lightning.checks import require
from icl_lightning.models import gpt2_cpu


class Block(nn.Module):
    """One pre-LayerNorm GPT-2 block: causal attention, then the GELU MLP, each residual."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = nn.LayerNorm(embed_dim)
        self.c_attn = nn.Linear(embed_dim, 3 * embed_dim)  # W_Q, W_K, W_V stacked
        self.attn_c_proj = nn.Linear(embed_dim, embed_dim)
        self.ln_2 = nn.LayerNorm(embed_dim)
        self.c_fc = nn.Linear(embed_dim, 4 * embed_dim)
        self.mlp_c_proj = nn.Linear(4 * embed_dim, embed_dim)

    def forward(self, h: torch.Tensor, read: slice = slice(None)) -> torch.Tensor:
        """``(B, T, D)`` tokens -> the block's output at the positions ``h[:, read]`` (every
        position by default). Only those positions query, but each still attends to every
        token up to it: the output at position t is the same whatever ``read`` holds."""
        B, T, D = h.shape
        linear = gpt2_cpu.linear  # F.linear, by oneDNN on the CPU
        qkv = linear(self.ln_1(h), self.c_attn.weight, self.c_attn.bias)
        qkv = qkv.view(B, T, 3, self.num_heads, D // self.num_heads)
        a = gpt2_cpu.attention(qkv, read)  # softmax(q k^T / sqrt(D/H)) v, causal
        h = h[:, read] + linear(a.reshape(B, -1, D), self.attn_c_proj.weight, self.attn_c_proj.bias)
        u = linear(self.ln_2(h), self.c_fc.weight)  # its bias goes in with the GELU
        y = gpt2_cpu.bias_gelu(u, self.c_fc.bias)
        return h + linear(y, self.mlp_c_proj.weight, self.mlp_c_proj.bias)


class GPT2(nn.Module):
    """Garg et al.'s GPT-2-style in-context learner; predicts at every x of the prompt.

    Args:
        input_dim: d (linked from the data by the CLI).
        num_positions: the most points (context + query) a prompt may hold; the model learns
            ``2 * num_positions`` positions (Garg et al.: 101 at d = 20, 11 for the toy runs).
        embed_dim: D, the width.
        num_layers: L, the blocks.
        num_heads: H, attention heads (D must be a multiple of H).

    Raises:
        ValueError: for an impossible option, or a prompt longer than ``num_positions``.

    Example::

        model = GPT2(input_dim=5, num_positions=11, embed_dim=64, num_layers=3, num_heads=2)
        model.prefix_predictions(context_x, context_y, query_x)  # (B, N + 1)
    """

    def __init__(
        self,
        input_dim: PositiveInt,
        num_positions: PositiveInt = 101,
        embed_dim: PositiveInt = 256,
        num_layers: PositiveInt = 12,
        num_heads: PositiveInt = 8,
    ) -> None:
        super().__init__()
        for option, value in [
            ("input_dim", input_dim),
            ("num_positions", num_positions),
            ("embed_dim", embed_dim),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
        ]:
            require(isinstance(value, int) and value >= 1, option, value, "an integer >= 1")
        require(
            embed_dim % num_heads == 0,
            "embed_dim",
            embed_dim,
            f"a multiple of num_heads={num_heads}",
        )
        self.input_dim, self.num_positions = int(input_dim), int(num_positions)
        self.num_layers, self.num_heads = int(num_layers), int(num_heads)
        self.read_in = nn.Linear(input_dim, embed_dim)
        self.wpe = nn.Embedding(2 * num_positions, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(embed_dim)
        self.read_out = nn.Linear(embed_dim, 1)
        self._init_backbone()

    def _init_backbone(self) -> None:
        """GPT-2's initialisation of the backbone (Hugging Face's ``GPT2PreTrainedModel``)."""
        nn.init.normal_(self.wpe.weight, std=0.02)
        for name, p in self.blocks.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.num_layers))
            elif "ln_" not in name:
                nn.init.normal_(p, std=0.02) if name.endswith("weight") else nn.init.zeros_(p)

    def embed(self, context_x, context_y, query_x) -> torch.Tensor:
        """``(B, 2N+1, D)`` read-in tokens ``x_1, y_1, ..., x_N, y_N, x_q`` plus positions."""
        B, N, d = context_x.shape
        require(
            N + 1 <= self.num_positions,
            "num_positions",
            self.num_positions,
            f">= {N + 1}, the points of these prompts (context + query)",
        )
        y_tokens = F.pad(context_y[..., None], (0, d - 1))  # (y, 0, ..., 0)
        z = torch.stack([context_x, y_tokens], dim=2).reshape(B, 2 * N, d)
        z = torch.cat([z, query_x[:, None]], dim=1)
        return self.read_in(z) + self.wpe.weight[: 2 * N + 1]

    def hidden(self, context_x, context_y, query_x, read: slice = slice(None)) -> torch.Tensor:
        """``(B, T', D)``: the last block's output at the positions ``read`` (every one of the
        2N+1 by default) after the final LayerNorm. The last block computes only those: the
        prefix predictions need half the positions (the x tokens), the query prediction one."""
        h = self.embed(context_x, context_y, query_x)
        for block in self.blocks[:-1]:
            h = block(h)
        return self.ln_f(self.blocks[-1](h, read))

    def prefix_predictions(self, context_x, context_y, query_x) -> torch.Tensor:
        """``(B, N+1)``: column k is the prediction for ``x_{k+1}`` (``x_q`` for k = N) after the
        first k points."""
        h = self.hidden(context_x, context_y, query_x, slice(0, None, 2))  # the x tokens
        return self.read_out(h)[..., 0]

    def forward(self, context_x, context_y, query_x) -> torch.Tensor:
        """``(B,)`` query predictions (the last column of :meth:`prefix_predictions`)."""
        h = self.hidden(context_x, context_y, query_x, slice(-1, None))
        return self.read_out(h)[:, 0, 0]
