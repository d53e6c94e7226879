"""A stack of K contextual blocks (``ContextualTransformer(num_blocks=K)``) and its per-block
probes: Theorem 2.2 and Proposition 3.1 for every block in float64 on random weights, and the
CLI."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, image_tags, read_scalars, run_cli, tiny_args
from references import delta_W_sequence
from test_delta_w_probes import probes_yaml

from icl_lightning.callbacks import DeltaWConvergence, DeltaWEquivalence, FinetuneComparison
from icl_lightning.data.batch import ICLBatch
from icl_lightning.models import ContextualBlock, ContextualTransformer
from icl_lightning.theory.delta_w import A_sequence, equivalence
from icl_lightning.theory.finetune import delta_W_predictions, sgd_on_W

TOL = 1e-10
B, N, d = 5, 7, 3


def stack(K, attention, mlp_skip, layer_norm) -> ContextualTransformer:
    torch.manual_seed(K)
    return ContextualTransformer(
        d,
        num_heads=2,
        attention=attention,
        mlp_skip=mlp_skip,
        layer_norm=layer_norm,
        num_blocks=K,
        init_scale=0.5,
    ).double()


def prompt(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cx, cy, qx = (
        torch.randn(*s, generator=g, dtype=torch.float64) for s in ((B, N, d), (B, N), (B, d))
    )
    return cx, cy, qx


CASES = [
    (K, attention, skip, ln)
    for K in (2, 4)
    for attention in ("softmax", "linear")
    for skip in (False, True)
    for ln in (False, True)
]


@pytest.mark.parametrize(("K", "attention", "mlp_skip", "layer_norm"), CASES)
def test_theorem_2_2_for_every_block(K, attention, mlp_skip, layer_norm):
    """M_{W_k}(A_k(C^k, x^k)) = M_{W_k + dW_k}(A_k(x^k)) (+ dA_k) for k = 1..K, and the final
    prediction is unchanged when block k's query output is replaced."""
    model = stack(K, attention, mlp_skip, layer_norm)
    cx, cy, qx = prompt()
    with torch.no_grad():
        T = model(cx, cy, qx)
        for k in range(1, K + 1):
            e = equivalence(model, k, cx, cy, qx)
            scale = e.output.abs().max()
            assert (e.output - e.implicit_output).abs().max() < TOL * scale
            assert (e.prediction - T).abs().max() < TOL * T.abs().max()
            assert (e.implicit_prediction - T).abs().max() < TOL * T.abs().max()


@pytest.mark.parametrize(("K", "attention", "mlp_skip", "layer_norm"), CASES[::3])
def test_prefix_running_sums_for_every_block(K, attention, mlp_skip, layer_norm):
    """Block k's running-sum prefixes equal masked passes A_k(c^k_1..c^k_i, x^k)."""
    model = stack(K, attention, mlp_skip, layer_norm)
    cx, cy, qx = prompt(1)
    with torch.no_grad():
        for k in range(1, K + 1):
            A_seq = A_sequence(model, k, cx, cy, qx)
            context, query = model.block_input(k, cx, cy, qx)
            layer = model.layers(k)[0]
            keep = torch.arange(N) < torch.arange(N + 1)[:, None]  # (N + 1, N): prefix i
            masked = layer(context, query, keep.expand(B, -1, -1))
            assert (A_seq - masked).abs().max() < TOL * masked.abs().max()
            assert (A_seq[:, 0] - layer.alone(query)).abs().max() < TOL * masked.abs().max()


def test_context_tokens_never_see_the_query():
    model = stack(3, "softmax", False, True)
    cx, cy, qx = prompt(2)
    with torch.no_grad():
        for k in (2, 3):
            one = model.block_input(k, cx, cy, qx)[0]
            other = model.block_input(k, cx, cy, qx + 1.0)[0]
            assert (one - other).abs().max() == 0


def test_one_block_is_the_one_block_stack():
    """ContextualBlock is ContextualTransformer(num_blocks=1): the same state-dict names (no
    ``earlier``) and weights from one seed, the same forward, ``M_W(A(C, x))[-1]``."""
    torch.manual_seed(0)
    block = ContextualBlock(d)
    torch.manual_seed(0)
    one = ContextualTransformer(d, num_blocks=1)
    assert block.num_blocks == 1 and type(block).__name__ == "ContextualBlock"
    assert all(not name.startswith("earlier") for name in block.state_dict())
    pairs = zip(block.state_dict().items(), one.state_dict().items(), strict=True)
    for (name, p), (other, q) in pairs:
        assert name == other and torch.equal(p, q)
    cx, cy, qx = (t.float() for t in prompt())
    layer, mlp = block.layers(1)
    assert torch.equal(block(cx, cy, qx), mlp(layer(*block.tokens(cx, cy, qx)))[:, -1])
    assert torch.equal(block(cx, cy, qx), one(cx, cy, qx))


def test_old_config_key_builds_the_stack():
    """``ContextualBlock(num_blocks=K)`` (configs written before ContextualTransformer) is the
    K-block stack: the same parameters and predictions as ContextualTransformer from one seed."""
    torch.manual_seed(0)
    old = ContextualBlock(d, num_blocks=3, num_heads=2)
    torch.manual_seed(0)
    new = ContextualTransformer(d, num_blocks=3, num_heads=2)
    assert old.state_dict().keys() == new.state_dict().keys()
    cx, cy, qx = (t.float() for t in prompt())
    assert old.num_blocks == 3 and torch.equal(old(cx, cy, qx), new(cx, cy, qx))


def test_block_past_K_is_a_clear_error():
    model = stack(2, "softmax", False, False)
    with pytest.raises(ValueError, match=r"block=3 is invalid: expected an integer in 1\.\.2"):
        model.layers(3)
    with pytest.raises(ValueError, match=r"block=3 is invalid: expected an integer in 1\.\.2"):
        equivalence(model, 3, *prompt())
    with pytest.raises(ValueError, match="block="):
        DeltaWEquivalence(block=0)
    with pytest.raises(ValueError, match="num_blocks=0"):
        ContextualTransformer(d, num_blocks=0)


def test_cli_fit_logs_every_block(tmp_path):
    config = f"--config={CONFIGS / 'contextual_transformer.yaml'}"
    probes = f"--config={probes_yaml(tmp_path, block='all')}"
    cli = run_cli(["fit", config, probes, *tiny_args(tmp_path)])
    results = {}
    for probe in cli.trainer.callbacks:
        if isinstance(probe, DeltaWEquivalence | DeltaWConvergence | FinetuneComparison):
            results.update(probe.last_results)
    for k in (1, 2):
        assert all(math.isfinite(results[f"ft/block{k}/{n}_loss_i6"]) for n in ("sgd", "dw"))
        assert results[f"dw/block{k}/max_rel_diff"] < 1e-4
        assert math.isclose(
            results[f"dw/block{k}/loss_context"], results[f"dw/block{k}/loss_delta_w"], rel_tol=1e-5
        )
        assert math.isfinite(results[f"dw/block{k}/update_ratio"])
    assert {0, 3, 6} <= set(read_scalars(tmp_path)["dw/block1/max_abs_diff"])
    assert {"dw/block1/convergence", "dw/block2/convergence"} <= image_tags(tmp_path)
    assert {"ft/block1/comparison", "ft/block2/comparison"} <= image_tags(tmp_path)


def test_cli_block_past_K_is_a_usage_error(tmp_path, capsys):
    config = f"--config={CONFIGS / 'contextual_transformer.yaml'}"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", config, f"--config={probes_yaml(tmp_path, block=3)}", *tiny_args(tmp_path)])
    assert exit_info.value.code == 2
    assert "block=3 is invalid" in capsys.readouterr().err
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ("--model.model.help=icl_lightning.models.ContextualTransformer", "--model.num_blocks"),
        ("--model.model.help=icl_lightning.models.ContextualBlock", "--model.num_blocks"),
        ("--trainer.callbacks.help=icl_lightning.callbacks.DeltaWEquivalence", "'all'"),
        ("--trainer.callbacks.help=icl_lightning.callbacks.DeltaWConvergence", "'all'"),
        ("--trainer.callbacks.help=icl_lightning.callbacks.FinetuneComparison", "'all'"),
    ],
)
def test_new_options_in_help(capsys, option, named):
    config = f"--config={CONFIGS / 'contextual_transformer.yaml'}"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", config, option])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert named in out and ("num_blocks" in out)


def test_block_none_on_a_stack_measures_block_K_with_the_plain_tags():
    model = stack(2, "softmax", False, False)
    cx, cy, qx = prompt(3)
    batch = ICLBatch(cx, cy, qx, torch.zeros(B, dtype=torch.float64))
    with torch.no_grad():
        sums = DeltaWEquivalence().compute(model, batch)
        e = equivalence(model, 2, cx, cy, qx)
        assert sums["max_abs_diff"] == (e.output - e.implicit_output).abs().max()
        assert set(DeltaWConvergence().compute(model, batch)) == {"norm", "update"}


def finetune_sums(model: ContextualTransformer, block, lr: float = 0.05) -> dict[str, torch.Tensor]:
    """FinetuneComparison's sums on ``prompt(4)`` (targets: the context's mean), as measured."""
    cx, cy, qx = prompt(4)
    batch = ICLBatch(cx, cy, qx, cy.mean(1))
    with torch.no_grad():  # as the probe base calls it
        return FinetuneComparison(lr=lr, block=block).compute(model, batch)


def test_finetune_on_one_block_is_paper_Bs_comparison():
    """K = 1: block=1 (tags block1/) and block=None give paper B's single-block learners:
    SGD on W from A(x_i), tested at A(x_q), and T_{W + Delta W_i}(x)."""
    model = stack(1, "softmax", True, True)
    cx, cy, qx = prompt(4)
    y = cy.mean(1)
    layer = model.layers(1)[0]
    with torch.no_grad():
        A_q, A_x = layer.alone(F.pad(qx, (0, 1))), layer.alone(F.pad(cx, (0, 1)).flatten(0, 1))
        sgd = sgd_on_W(model.mlp, A_x.unflatten(0, (B, N)), cy, A_q, lr=0.05)
        dw = delta_W_predictions(model.mlp, A_sequence(model, 1, cx, cy, qx))
    today = {
        "loss_i0": (0.5 * (model.mlp(A_q)[:, -1] - y) ** 2).sum(),
        "sgd_loss": (0.5 * (sgd - y[:, None]) ** 2).sum(0),
        "dw_loss": (0.5 * (dw - y[:, None]) ** 2).sum(0),
    }
    for block, prefix in ((1, "block1/"), (None, "")):
        sums = finetune_sums(model, block)
        assert set(sums) == {prefix + name for name in today}
        for name, value in today.items():
            assert (sums[prefix + name] - value).abs().max() < TOL * value.abs().max(), name


def _context_free(model: ContextualTransformer, k: int, W_k: torch.Tensor, x: torch.Tensor):
    """T_{W_k}(x): the query alone through the stack (no context) with block k's W = W_k."""
    name = "mlp.W" if k == model.num_blocks else f"earlier.{k - 1}.mlp.W"
    empty_x, empty_y = x.new_zeros(len(x), 0, x.shape[-1]), x.new_zeros(len(x), 0)
    return torch.func.functional_call(model, {name: W_k}, (empty_x, empty_y, x))


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("variant", [("softmax", False, False), ("linear", True, True)])
def test_finetune_of_block_k_equals_autograd_sgd_and_the_updated_stack(k, variant):
    """K = 2, block k: SGD on W_k of a copy of the stack, each example a prompt without context
    (torch.optim.SGD, task by task), and the context-free stack with W_k + Delta W_k,i from
    block k's own tokens, equal the probe's losses for every i (its first SGD step included)."""
    model = stack(2, *variant)  # attention, mlp_skip, layer_norm
    sums = finetune_sums(model, k)
    cx, cy, qx = prompt(4)
    y = cy.mean(1)
    W_k = model.layers(k)[1].W.detach()
    with torch.no_grad():
        dW = delta_W_sequence(W_k, A_sequence(model, k, cx, cy, qx))  # (B, N, m, D)
        loss_i0 = (0.5 * (_context_free(model, k, W_k, qx) - y) ** 2).sum()
    sgd_loss, dw_loss = torch.zeros(N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64)
    for b in range(B):
        W = W_k.clone().requires_grad_()
        sgd = torch.optim.SGD([W], lr=0.05)
        for i in range(N):
            example = _context_free(model, k, W, cx[b : b + 1, i])
            sgd.zero_grad()
            (0.5 * (example - cy[b, i]) ** 2).sum().backward()
            sgd.step()
            with torch.no_grad():
                test = _context_free(model, k, W, qx[b : b + 1])
                implicit = _context_free(model, k, W_k + dW[b, i], qx[b : b + 1])
            sgd_loss[i] += (0.5 * (test - y[b]) ** 2).sum()
            dw_loss[i] += (0.5 * (implicit - y[b]) ** 2).sum()
    prefix = f"block{k}/"
    assert (sums[prefix + "loss_i0"] - loss_i0).abs() < TOL * loss_i0
    assert (sums[prefix + "sgd_loss"] - sgd_loss).abs().max() < TOL * sgd_loss.abs().max()
    assert (sums[prefix + "dw_loss"] - dw_loss).abs().max() < TOL * dw_loss.abs().max()
    assert (sgd_loss[0] - loss_i0).abs() > 1e-6 and (dw_loss - sgd_loss).abs().max() > 1e-6
