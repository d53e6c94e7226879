"""The GPT-2-style model: the equations of its docstring, causal prefixes, and a CLI run."""

import math

import pytest
import torch
import yaml
from conftest import CONFIGS, run_cli, tiny_args

from icl_lightning.models import GPT2


def naive_forward(model: GPT2, cx, cy, qx) -> torch.Tensor:
    """Token by token: ``(B, N+1)`` predictions at the x tokens, every product written out."""
    B, N, d = cx.shape
    tokens = []
    for i in range(N):
        tokens += [
            cx[:, i],
            torch.cat([cy[:, i : i + 1], torch.zeros(B, d - 1, dtype=cx.dtype)], 1),
        ]
    z = torch.stack(tokens + [qx], dim=1)
    h = z @ model.read_in.weight.T + model.read_in.bias + model.wpe.weight[: 2 * N + 1]

    def ln(v, m):
        mu, var = v.mean(-1, keepdim=True), v.var(-1, unbiased=False, keepdim=True)
        return (v - mu) / torch.sqrt(var + m.eps) * m.weight + m.bias

    def gelu(u):
        return 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))

    T, H = h.shape[1], model.num_heads
    for blk in model.blocks:
        D = h.shape[-1]
        q, k, v = (ln(h, blk.ln_1) @ blk.c_attn.weight.T + blk.c_attn.bias).split(D, -1)
        heads = []
        for j in range(H):
            s = slice(j * D // H, (j + 1) * D // H)
            scores = q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(D // H)
            scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), -math.inf)
            heads.append(scores.softmax(-1) @ v[..., s])
        h = h + torch.cat(heads, -1) @ blk.attn_c_proj.weight.T + blk.attn_c_proj.bias
        u = ln(h, blk.ln_2) @ blk.c_fc.weight.T + blk.c_fc.bias
        h = h + gelu(u) @ blk.mlp_c_proj.weight.T + blk.mlp_c_proj.bias
    out = ln(h, model.ln_f) @ model.read_out.weight.T + model.read_out.bias
    return out[:, 0::2, 0]


def prompts(B=3, N=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, N, d, generator=g, dtype=torch.float64),
        torch.randn(B, N, generator=g, dtype=torch.float64),
        torch.randn(B, d, generator=g, dtype=torch.float64),
    )


def test_gpt2_equals_the_written_out_equations_in_float64():
    torch.manual_seed(0)
    model = GPT2(input_dim=4, num_positions=8, embed_dim=16, num_layers=2, num_heads=4).double()
    for p in model.parameters():  # non-trivial LayerNorm and biases too
        p.data.add_(0.1 * torch.randn_like(p))
    cx, cy, qx = prompts()
    expected = naive_forward(model, cx, cy, qx)
    torch.testing.assert_close(model.prefix_predictions(cx, cy, qx), expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(model(cx, cy, qx), expected[:, -1], rtol=0, atol=1e-10)


def test_gradients_equal_the_written_out_equations_in_float64():
    """The last block computes only the positions read (the x tokens): the gradients of every
    weight are those of the full computation."""
    torch.manual_seed(2)
    model = GPT2(input_dim=3, num_positions=6, embed_dim=8, num_layers=2, num_heads=2).double()
    cx, cy, qx = prompts(N=5, d=3)
    weights = torch.randn(6, dtype=torch.float64)
    ours = torch.autograd.grad(
        (model.prefix_predictions(cx, cy, qx) @ weights).sum(), list(model.parameters())
    )
    naive = torch.autograd.grad(
        (naive_forward(model, cx, cy, qx) @ weights).sum(), list(model.parameters())
    )
    for a, b in zip(ours, naive, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_every_prefix_is_the_prompt_cut_there():
    """Column k of the prefix predictions is the model's query prediction for the prompt of the
    first k points and query x_{k+1}: one pass trains on every prefix."""
    torch.manual_seed(1)
    model = GPT2(input_dim=3, num_positions=6, embed_dim=8, num_layers=2, num_heads=2).double()
    cx, cy, qx = prompts(N=5, d=3)
    all_k = model.prefix_predictions(cx, cy, qx)
    xs = torch.cat([cx, qx[:, None]], 1)
    for k in range(6):
        cut = model(cx[:, :k], cy[:, :k], xs[:, k])
        torch.testing.assert_close(all_k[:, k], cut, rtol=0, atol=1e-12)


def test_options_and_prompt_length_are_checked():
    with pytest.raises(
        ValueError, match="embed_dim=10 is invalid: expected a multiple of num_heads=4"
    ):
        GPT2(input_dim=2, embed_dim=10, num_heads=4)
    model = GPT2(input_dim=3, num_positions=4, embed_dim=8, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match="num_positions=4 is invalid: expected >= 6"):
        model(*(t.float() for t in prompts(N=5, d=3)))


def test_gpt2_init_is_gpt2s():
    model = GPT2(input_dim=5, embed_dim=64, num_layers=8, num_heads=2)
    assert abs(float(model.blocks[0].c_fc.weight.detach().std()) - 0.02) < 0.001
    assert abs(float(model.blocks[0].mlp_c_proj.weight.detach().std()) - 0.02 / 4) < 0.0003
    assert float(model.blocks[0].c_attn.bias.abs().max()) == 0


@pytest.mark.parametrize("size", ["tiny", "small", "standard"])
def test_garg_configs_have_gargs_sizes(size):
    cfg = yaml.safe_load((CONFIGS / f"garg_{size}.yaml").read_text())
    args = cfg["model"]["init_args"]["model"]["init_args"]
    expected = {"tiny": (3, 64, 2), "small": (6, 128, 4), "standard": (12, 256, 8)}[size]
    assert (args["num_layers"], args["embed_dim"], args["num_heads"]) == expected


def test_garg_tiny_trains_on_every_prefix_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli(
        ["fit", f"--config={CONFIGS / 'garg_tiny.yaml'}", *tiny_args(tmp_path, steps=4)]
        + ["--data.init_args.task.init_args.input_dim=3", "--data.init_args.num_context=5"]
        + ["--data.init_args.curriculum=null", "--trainer.callbacks=[]"]
    )
    from conftest import read_scalars

    scalars = read_scalars(next(tmp_path.glob("garg_tiny/version_0")))
    assert {"train/loss", "val/loss", "val/prefix_loss"} <= set(scalars)
