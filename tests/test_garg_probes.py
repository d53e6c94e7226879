"""Garg et al.'s shifted prompts and the loss-against-k probes, end to end through the CLI."""

import math

import pytest
import torch
from conftest import CONFIGS, read_scalars, run_cli, tiny_args

from icl_lightning.data import LinearRegression, SparseLinear, seeded_generator
from icl_lightning.data.garg_shifts import SHIFTS, shifted_prompts

F64 = torch.float64
D, K = 4, 9


def draw(shift, task=None, scale=2.0, n=64):
    task = task or LinearRegression(D, "normal")
    return shifted_prompts(task, shift, n, K, seeded_generator("cpu", 5), scale, F64)


def weights(prompts):
    """Each prompt's w from its first K + 1 noiseless points (K + 1 > d)."""
    return torch.linalg.lstsq(prompts.xs, prompts.ys[..., None]).solution[..., 0]


@pytest.mark.parametrize("shift", SHIFTS)
def test_every_shift_keeps_one_task_per_prompt(shift):
    """Points and queries of a prompt share its task: y = <w, x> for both (scaled for
    scale_y; noisy_outputs adds noise, checked apart)."""
    p = draw(shift)
    assert p.xs.shape == p.qs.shape == (64, K + 1, D) and p.ys.shape == p.qys.shape
    if shift == "noisy_outputs":
        return
    if shift == "half_subspace":  # rank d/2: w is determined only on the subspace
        assert torch.linalg.matrix_rank(p.xs).max() == D // 2
    w = torch.linalg.pinv(p.xs) @ p.ys[..., None]
    torch.testing.assert_close((p.qs @ w)[..., 0], p.qys, rtol=0, atol=1e-9)
    assert p.own_queries == (shift in SHIFTS[-3:])


def test_shift_definitions():
    std = draw("standard")
    torch.testing.assert_close(draw("scale_x", scale=3.0).xs, 3 * std.xs)  # same draws, scaled
    torch.testing.assert_close(draw("scale_y", scale=0.5).ys, 0.5 * std.ys)
    quadrants = draw("random_quadrants")
    signs = quadrants.xs.sign()
    assert (signs == signs[:, :1]).all()  # every context point in the prompt's one orthant
    torch.testing.assert_close(quadrants.xs.abs(), quadrants.qs.abs())  # queries: the originals
    ortho = draw("orthogonal_train_test")
    for k in range(1, D):
        inner = torch.einsum("bjd,bd->bj", ortho.xs[:, :k], ortho.qs[:, k])
        assert inner.abs().max() < 1e-9
        torch.testing.assert_close(ortho.qs[:, k].norm(dim=-1), ortho.xs[:, k].norm(dim=-1))
    assert (ortho.qs[:, D:] == 0).all()  # Garg et al.: no orthogonal query from d points on
    overlap = draw("overlapping_train_test")
    for k in range(1, K + 1):
        hit = (overlap.qs[:, k, None] == overlap.xs[:, :k]).all(-1).any(-1)
        assert hit.all()
    skewed = draw("skewed", n=20_000)
    cov = torch.einsum("bnd,bne->de", skewed.xs, skewed.xs) / (20_000 * (K + 1))
    eig = torch.linalg.eigvalsh(cov).flip(0)
    lam = 1 / torch.arange(1, D + 1, dtype=F64) ** 2  # S^2's eigenvalues, normalised to sum d
    torch.testing.assert_close(eig, lam * D / lam.sum(), rtol=0.05, atol=0.01)
    noisy = draw("noisy_outputs", n=20_000)
    clean = draw("standard", n=20_000)
    m = float(clean.ys.square().mean())
    assert abs(float(noisy.ys.square().mean()) / m - 1) < 0.02  # renormalised
    resid = noisy.ys - clean.ys * math.sqrt(m / (m + 1))
    assert abs(float(resid.std()) - math.sqrt(m / (m + 1))) < 0.02


def test_input_shifts_need_sample_inputs():
    from icl_lightning.data import ReLUNetwork

    with pytest.raises(ValueError, match="shift='skewed' is invalid.*sample_inputs"):
        draw("skewed", task=ReLUNetwork(D))
    assert draw("scale_y", task=ReLUNetwork(D)).ys.shape == (64, K + 1)


def test_probes_log_every_learner_as_its_own_tensorboard_run(tmp_path, monkeypatch):
    """A GPT2 run on sparse linear regression with BaselineCurves and a shifted probe: each
    learner's curve is a TensorBoard run beside the version folder with one value per k; least
    squares' curve is 0 from d points on; the scalars at k = N are the curves' last values."""
    monkeypatch.chdir(tmp_path)
    run_cli(
        ["fit", f"--config={CONFIGS / 'garg_tiny.yaml'}", *tiny_args(tmp_path, steps=2)]
        + ["--trainer.callbacks.init_args.tuning_tasks=128"]
        + ["--data.init_args.task.class_path=icl_lightning.data.SparseLinear"]
        + ["--data.init_args.task.init_args.input_dim=4", "--data.init_args.num_context=6"]
        + ["--data.init_args.curriculum=null", "--trainer.callbacks.num_tasks=64"]
        + ["--trainer.callbacks.init_args.lasso_alphas=[0.1]"]
        + ["--trainer.callbacks+=icl_lightning.callbacks.ShiftedPromptCurves"]
        + ["--trainer.callbacks.shift=skewed", "--trainer.callbacks.num_tasks=64"]
        + ["--trainer.callbacks.tuning_tasks=128", "--trainer.callbacks.lasso_alphas=[0.1]"]
    )
    version = tmp_path / "garg_tiny" / "version_0"
    learners = {"model", "least_squares", "nn_3", "averaging", "gd_L2", "gd++_L2", "lasso_0.1"}
    main = {t: v for t, v in read_scalars(version).items() if "loss_vs_k" not in t}
    for folder in ("baselines", "shifted/skewed"):
        steps = version.parent / "version_0_curves" / folder
        assert {p.name for p in steps.iterdir()} == {"step_0000000", "step_0000002"}
        curves = steps / "step_0000002"
        assert {p.name for p in curves.iterdir()} == learners
        for name in learners:
            curve = read_scalars(curves / name)[f"{folder}/loss_vs_k"]
            assert sorted(curve) == list(range(7))  # k = 0..N
            expected = main[f"{folder}/loss_{name}"][2]  # the scalar at k = N
            assert curve[6] == pytest.approx(expected, rel=1e-5, abs=1e-9)
        least_squares = read_scalars(curves / "least_squares")[f"{folder}/loss_vs_k"]
        assert max(least_squares[k] for k in (4, 5, 6)) < 1e-8  # exact from k = d on


def test_baseline_options_are_checked():
    from icl_lightning.callbacks import BaselineCurves, ShiftedPromptCurves

    with pytest.raises(ValueError, match="lasso_alphas"):
        BaselineCurves(lasso_alphas=[0.0])
    with pytest.raises(ValueError, match="shift='sideways' is invalid"):
        ShiftedPromptCurves(shift="sideways")
    assert ShiftedPromptCurves(shift="scale_x", scale=3).tag == "scale_x=3"
    assert isinstance(SparseLinear(4), LinearRegression)
