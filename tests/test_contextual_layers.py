"""Paper B for every kind of contextual layer (issue 31): the interface's three readings against
token-by-token references, Theorem 2.2 and Proposition 3.1 exact in float64 (<= 1e-10) with
random untrained weights, K-block stacks, the Delta-W probes in a real fit, DDP, and a user's
own layer."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, linear_prompts, read_scalars, run_cli, tiny_args
from references import delta_W_sequence, gradient_steps, output_with, token_loss
from test_delta_w_probes import one_and_two_processes_agree, probes_yaml
from torch import nn
from torch.func import grad, vmap

from icl_lightning.callbacks import DeltaWConvergence, DeltaWEquivalence, FinetuneComparison
from icl_lightning.models import ContextualBlock, ContextualTransformer
from icl_lightning.models.contextual_layers import (
    GRU,
    LSTM,
    ContextualLayer,
    DiagonalSSM,
    ElmanRNN,
    SelectiveSSM,
    linear_scan,
)
from icl_lightning.theory.delta_w import A_sequence, delta_W_split, equivalence, output_shift

TOL = 1e-10
B, N, d = 6, 7, 2
KINDS = ["rnn", "gru", "lstm", "diagonal", "selective"]
VARIANTS = list(itertools.product(KINDS, [False, True], [False, True]))
IDS = [f"{k}-{'skip' if s else 'noskip'}-{'ln' if ln else 'noln'}" for k, s, ln in VARIANTS]


def random_model(kind, mlp_skip=False, layer_norm=False, num_blocks=1, residual=True):
    """A float64 stack with random weights (LayerNorms' affine parameters and the SSMs'
    feed-through too, so that no parameter sits at a special value)."""
    torch.manual_seed(0)
    model = ContextualTransformer(
        d,
        mlp_width=10,
        activation="gelu",
        contextual_layer=kind,
        state_size=4,
        mlp_skip=mlp_skip,
        layer_norm=layer_norm,
        attention_residual=residual,
        num_blocks=num_blocks,
    ).double()
    for name, p in model.named_parameters():
        if "norm" in name or name.endswith(".E"):
            p.data.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture
def prompt():
    return linear_prompts(B, N, d)


def reference(layer: ContextualLayer, context, query) -> torch.Tensor:
    """``A(C, x)`` ``(B, D)`` by a loop over the tokens ``[c_1, ..., c_N, x]``, each kind's
    recurrence written out (torch's single-step cells for the gated RNNs)."""
    tokens = layer.norm_in(torch.cat([context, query.unsqueeze(1)], 1)).unbind(1)
    if isinstance(layer, ElmanRNN):
        rnn = layer.cell
        S = rnn.hidden_size
        cell = {GRU: nn.GRUCell, LSTM: nn.LSTMCell}.get(type(layer))
        if cell is not None:
            cell = cell(rnn.input_size, S).double()
            cell.load_state_dict({k.removesuffix("_l0"): v for k, v in rnn.state_dict().items()})
        h = c = tokens[0].new_zeros(len(query), S)
        for u in tokens:
            if cell is None:
                h = torch.tanh(
                    u @ rnn.weight_ih_l0.T
                    + rnn.bias_ih_l0
                    + h @ rnn.weight_hh_l0.T
                    + rnn.bias_hh_l0
                )
            elif isinstance(layer, LSTM):
                h, c = cell(u, (h, c))
            else:
                h = cell(u, h)
        y = h @ layer.W_out.T + layer.b_out
    elif isinstance(layer, DiagonalSSM):
        Lambda = torch.exp(-torch.exp(layer.nu))
        h = tokens[0].new_zeros(len(query), len(Lambda))
        for u in tokens:
            h = Lambda * h + torch.sqrt(1 - Lambda**2) * (u @ layer.B.T)
        y = h @ layer.C.T + layer.E * u
    else:
        assert isinstance(layer, SelectiveSSM)
        A = -torch.exp(layer.A_log)  # (D, S)
        h = tokens[0].new_zeros(len(query), *A.shape)
        for u in tokens:
            Delta = F.softplus(u @ layer.W_Delta.T + layer.b_Delta)  # (B, D)
            B_t, C_t = u @ layer.W_B.T, u @ layer.W_C.T  # (B, S)
            h = torch.exp(Delta[..., None] * A) * h + (Delta * u)[..., None] * B_t[:, None]
            y = torch.einsum("bjs,bs->bj", h, C_t) + layer.E * u
    return layer.norm_out(query + y if layer.residual else y)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_the_three_readings_equal_the_token_loop(kind, layer_norm, residual, prompt):
    """A(C, x), A(x), every prefix A(c_1..c_i, x) and masked subsets == the explicit loop."""
    model = random_model(kind, layer_norm=layer_norm, residual=residual)
    layer = model.layers(1)[0]
    context, query = model.tokens(*prompt)
    assert (layer(context, query) - reference(layer, context, query)).abs().max() < TOL
    assert (layer.alone(query) - reference(layer, context[:, :0], query)).abs().max() < TOL
    prefixes = layer.prefixes(context, query)
    assert prefixes.shape == (B, N + 1, d + 1)
    for i in range(N + 1):
        assert (prefixes[:, i] - reference(layer, context[:, :i], query)).abs().max() < TOL
    keep = torch.rand(B, N, generator=torch.Generator().manual_seed(3)) < 0.5
    keep[0] = False  # one prompt keeps nothing: A(x)
    for b in range(B):
        rest = context[b : b + 1, keep[b]]
        want = reference(layer, rest, query[b : b + 1])
        assert (layer(context, query, keep)[b] - want[0]).abs().max() < TOL
    assert (prefixes[:, -1] - prefixes[:, 0]).abs().max() > 1e-3  # the context matters


def test_linear_scan_and_the_lstm_cell_states():
    """The chunked scan equals the loop for lengths with and without a tail after the chunks,
    with a per-token and a time-invariant (broadcast) ``a``; the LSTM's c from it."""
    g = torch.Generator().manual_seed(0)
    for T, a_shape in [(1, (3, 1, 4)), (2, (4,)), (16, (3, 16, 4)), (37, (3, 37, 4)), (37, (4,))]:
        a = torch.rand(*a_shape, generator=g, dtype=torch.float64)
        b = torch.randn(3, T, 4, generator=g, dtype=torch.float64)
        h, loop = torch.zeros(3, 4, dtype=torch.float64), []
        for t in range(T):
            h = a.expand_as(b)[:, t] * h + b[:, t]
            loop.append(h)
        assert (linear_scan(a, b) - torch.stack(loop, 1)).abs().max() < 1e-13
    layer = random_model("lstm").layers(1)[0]
    tokens = torch.randn(3, 9, d + 1, generator=g, dtype=torch.float64)
    (h_T, c_T) = layer.cell(tokens)[1]
    h, c = layer.states(tokens)
    assert (h[:, -1] - h_T[0]).abs().max() < 1e-14 and (c[:, -1] - c_T[0]).abs().max() < 1e-14


@pytest.mark.parametrize(("kind", "mlp_skip", "layer_norm"), VARIANTS, ids=IDS)
def test_theorem_2_2_exact(kind, mlp_skip, layer_norm, prompt):
    """T_W(C, x) = T_{W + dW}(x) (+ dA with the skip) and, for a part Y, T_W(C, x) =
    T_{W + dW(Y)}(C \\ Y, x) on the physically shortened context, through the model's forward."""
    model = random_model(kind, mlp_skip, layer_norm)
    cx, cy, qx = prompt
    e = equivalence(model, 1, cx, cy, qx)
    assert (model(cx, cy, qx) - e.implicit_prediction).abs().max() < TOL
    assert (e.output - e.implicit_output).abs().max() < TOL
    Y = torch.rand(B, N, generator=torch.Generator().manual_seed(2)) < 0.4
    split = delta_W_split(model, 1, cx, cy, qx, Y)
    assert (torch.linalg.svdvals(split.delta_W)[:, 1] < TOL).all()  # rank one
    for b in range(B):  # the block's own forward, W replaced, on C \ Y
        rest = ~Y[b]
        W = {"mlp.W": model.mlp.W + split.delta_W[b]}
        prompt_b = (cx[b : b + 1, rest], cy[b : b + 1, rest], qx[b : b + 1])
        implicit = torch.func.functional_call(model, W, prompt_b)
        if mlp_skip:
            implicit = implicit + output_shift(split.A_C[b], split.A_rest[b])[-1]
        assert (model(cx[b : b + 1], cy[b : b + 1], qx[b : b + 1]) - implicit).abs().max() < TOL


@pytest.mark.parametrize(("kind", "mlp_skip", "layer_norm"), VARIANTS, ids=IDS)
def test_proposition_3_1_per_token_updates(kind, mlp_skip, layer_norm, prompt):
    """W_i = W_{i-1} - h grad L_i(W_{i-1}) with autograd, Delta W_i == Theorem 2.2 on c_1..c_i,
    and T_{W + Delta W_i}(x) == T_W(c_1..c_i, x) (+ Delta A_i)."""
    model = random_model(kind, mlp_skip, layer_norm)
    cx, cy, qx = prompt
    W = model.mlp.W.detach()
    A_seq = A_sequence(model, 1, cx, cy, qx)
    dW = delta_W_sequence(W, A_seq)
    h, Delta = gradient_steps(W, A_seq)
    W_i = W.expand(B, *W.shape)
    for i in range(N):
        W_i = W_i - h[:, None, None] * vmap(grad(token_loss, argnums=1))(Delta[:, i], W_i)
        assert (W_i - (W + dW[:, i])).abs().max() < TOL
        split = delta_W_split(model, 1, cx[:, : i + 1], cy[:, : i + 1], qx)
        assert (dW[:, i] - split.delta_W).abs().max() < TOL
        implicit = output_with(model.mlp, A_seq[:, 0], W + dW[:, i])
        if mlp_skip:
            implicit = implicit + output_shift(A_seq[:, i + 1], A_seq[:, 0])[:, -1]
        assert (model(cx[:, : i + 1], cy[:, : i + 1], qx) - implicit).abs().max() < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_stacks_of_two_blocks(kind, prompt):
    """Block 1 maps context token i to M(A(c_1..c_{i-1}, c_i)) (the recurrence's own output,
    never the query); Theorem 2.2 holds for every block; prefixes equal direct passes."""
    model = random_model(kind, layer_norm=True, num_blocks=2)
    cx, cy, qx = prompt
    layer = model.layers(1)[0]
    context, _ = model.tokens(cx, cy, qx)
    read = layer.context_only(context)
    for i in range(N):
        assert (read[:, i] - reference(layer, context[:, :i], context[:, i])).abs().max() < TOL
    for k in (1, 2):
        e = equivalence(model, k, cx, cy, qx)
        assert (model(cx, cy, qx) - e.implicit_prediction).abs().max() < TOL
        block_context, block_query = model.block_input(k, cx, cy, qx)
        A_seq = A_sequence(model, k, cx, cy, qx)
        A_k = model.layers(k)[0]
        for i in (0, 3, N):
            want = reference(A_k, block_context[:, :i], block_query)
            assert (A_seq[:, i] - want).abs().max() < TOL


def fit_with_probes(tmp_path, kind: str, *options: str, **probe_args):
    """A 6-step fit of ``configs/contextual_block_<kind>.yaml`` (or a user's layer by import
    path, on contextual_block.yaml) with the three Delta-W probes every 3 steps; their
    results at the last step (``probe_args``: added to every probe's init_args)."""
    tmp_path.mkdir(exist_ok=True)
    config = f"contextual_block_{kind}.yaml" if kind in KINDS else "contextual_block.yaml"
    args = [
        "fit",
        f"--config={CONFIGS / config}",
        f"--config={probes_yaml(tmp_path, **probe_args)}",
    ]
    if kind not in KINDS:
        args.append(f"--model.model.init_args.contextual_layer={kind}")
    cli = run_cli(args + tiny_args(tmp_path, steps=6) + list(options))
    results = {}
    for probe in cli.trainer.callbacks:
        if isinstance(probe, DeltaWEquivalence | DeltaWConvergence | FinetuneComparison):
            assert probe.last_step == 6
            results.update(probe.last_results)
    return results


def assert_probes_measured(results: dict, prefix: str = "", M: int = 6) -> None:
    """Theorem 2.2 to float32 rounding, finite updates and both finetuning curves."""
    assert results[f"dw/{prefix}max_rel_diff"] < 1e-4
    rel = 1e-5 * abs(results[f"dw/{prefix}loss_context"])
    assert math.isclose(
        results[f"dw/{prefix}loss_context"], results[f"dw/{prefix}loss_delta_w"], abs_tol=rel
    )
    assert 0 < results[f"dw/{prefix}update_ratio"] < math.inf
    for i in range(1, M + 1):
        assert math.isfinite(
            results[f"ft/{prefix}sgd_loss_i{i}"] + results[f"ft/{prefix}dw_loss_i{i}"]
        )


@pytest.mark.parametrize("kind", KINDS)
def test_every_probe_in_a_short_fit_of_every_kind(tmp_path, kind):
    assert_probes_measured(fit_with_probes(tmp_path, kind))
    assert {0, 3, 6} <= set(read_scalars(tmp_path)["dw/max_abs_diff"])


def test_probes_on_every_block_of_a_recurrent_stack(tmp_path):
    results = fit_with_probes(tmp_path, "lstm", "--model.model.init_args.num_blocks=2", block="all")
    for k in (1, 2):
        assert_probes_measured(results, f"block{k}/")


def test_unknown_layer_is_a_usage_error():
    with pytest.raises(ValueError, match="contextual_layer='transformer'"):
        ContextualBlock(2, contextual_layer="transformer")
    with pytest.raises(ValueError, match="contextual_layer='torch.nn.Linear'"):
        ContextualBlock(2, contextual_layer="torch.nn.Linear")


class RunningMean(ContextualLayer):
    """A user's own contextual layer, the whole of it: the query plus a linear map of the mean
    of the tokens it has seen, ``A(c_1..c_i, x) = LN_2(x + W_V mean(e^_q, e^_1, .., e^_i))``."""

    def __init__(self, token_dim: int, residual: bool = True, layer_norm: bool = False):
        super().__init__(token_dim, residual, layer_norm)
        self.W_V = nn.Parameter(torch.randn(token_dim, token_dim) / token_dim)

    @staticmethod
    def means(tokens: torch.Tensor) -> torch.Tensor:  # running means along the tokens
        count = torch.arange(1, tokens.shape[1] + 1, dtype=tokens.dtype, device=tokens.device)
        return tokens.cumsum(1) / count.unsqueeze(-1)

    def prefixes(self, context: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        tokens = self.norm_in(torch.cat([query.unsqueeze(1), context], 1))  # query first
        return self._finish(self.means(tokens) @ self.W_V.T, query.unsqueeze(1))

    def context_only(self, context: torch.Tensor) -> torch.Tensor:  # for stacks: c_1..c_i
        return self._finish(self.means(self.norm_in(context)) @ self.W_V.T, context)


USER_LAYER = f"{__name__}.RunningMean"


def test_a_users_layer_is_exact_and_every_probe_runs_on_it(tmp_path):
    """The ~20-line subclass above plugs in by import path: Theorem 2.2 and Proposition 3.1 in
    float64, then all three probes in a fit, on one block and on every block of a stack."""
    torch.manual_seed(0)
    model = ContextualBlock(d, mlp_width=10, activation="gelu", contextual_layer=USER_LAYER)
    model = model.double()
    assert isinstance(model.layers(1)[0], RunningMean)
    g = torch.Generator().manual_seed(1)
    cx, cy, qx = (
        torch.randn(B, *s, generator=g, dtype=torch.float64) for s in [(N, d), (N,), (d,)]
    )
    e = equivalence(model, 1, cx, cy, qx)
    assert (model(cx, cy, qx) - e.implicit_prediction).abs().max() < TOL
    A_seq = A_sequence(model, 1, cx, cy, qx)
    for i in range(N + 1):
        assert (
            A_seq[:, i] - model.layers(1)[0](*model.tokens(cx[:, :i], cy[:, :i], qx))
        ).abs().max() < TOL
    assert_probes_measured(fit_with_probes(tmp_path / "one", USER_LAYER))
    stack = fit_with_probes(
        tmp_path / "stack", USER_LAYER, "--model.model.init_args.num_blocks=2", block="all"
    )
    for k in (1, 2):
        assert_probes_measured(stack, f"block{k}/")


@pytest.mark.slow
def test_ddp_two_processes_match_one_for_a_recurrent_block(tmp_path):
    """The probes' sharding (uneven shares) and all-reduce on a GRU block: 2 gloo processes
    give the numbers of 1."""
    scalars = one_and_two_processes_agree(tmp_path, "contextual_block_gru.yaml")
    assert {"dw/max_abs_diff", "dw/update_ratio", "ft/sgd_loss_i6"} <= scalars.keys()


@pytest.mark.slow
def test_benchmark_table_of_every_kind(tmp_path, monkeypatch):
    """``icl-benchmark --tables contextual``: bare beside fit and Lightning's loop alone for every
    kind, and the probes' seconds against N (shrunk here: 2 N values, 16 tasks, a few steps)."""
    import json

    from icl_lightning import bench_contextual, benchmark

    monkeypatch.chdir(CONFIGS.parent)  # the table names configs/... as icl-benchmark's others
    monkeypatch.setattr(bench_contextual, "PROBE_N", (5, 10))
    monkeypatch.setattr(bench_contextual, "TASKS", 16)
    out = tmp_path / "bench"
    args = ["--tables", "contextual", "--steps", "4", "--warmup", "1", "--repeats", "1"]
    benchmark.main([*args, "--out", str(out), "--data.init_args.num_context=5"])
    results = json.loads((out / "benchmark.json").read_text())["contextual"]
    assert set(results["runs"]) == set(bench_contextual.KINDS)
    for kind in bench_contextual.KINDS:
        assert results["runs"][kind]["fit / bare"][0] > 0
        assert results["runs"][kind]["loop / bare"][0] > 0
        seconds = results["probe_seconds"][f"{kind} N=10"]
        assert len(seconds) == 6 and seconds["DeltaWEquivalence / attention"] > 0
    assert "| gru | 10 |" in (out / "benchmark.md").read_text()
