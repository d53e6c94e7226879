"""The Delta-W probes through the real CLI, their batched SGD, and 1 vs 2 DDP processes."""

import copy
import math

import pytest
import torch
from conftest import (
    CONFIGS,
    cpu_validate_args,
    image_tags,
    read_scalars,
    run_cli,
    run_cli_subprocess,
    tiny_args,
)

from icl_lightning.callbacks import DeltaWConvergence, DeltaWEquivalence, FinetuneComparison
from icl_lightning.data import LinearRegression, seeded_generator
from icl_lightning.models import ContextualBlock

N = 6


def probes_yaml(tmp_path, **init_args):
    """A config that shrinks the three Delta-W probes (every 3 steps, 64 tasks; ``init_args``
    added or replaced) and N to 6, for a test."""
    probe = ", ".join(
        f"{k}: {v}" for k, v in ({"every_n_steps": 3, "num_tasks": 64} | init_args).items()
    )
    path = tmp_path / "probes.yaml"
    path.write_text(
        "trainer:\n  callbacks:\n"
        + "".join(
            f"    - class_path: icl_lightning.callbacks.{name}\n      init_args: {{{probe}}}\n"
            for name in ("DeltaWEquivalence", "DeltaWConvergence", "FinetuneComparison")
        )
        + f"data:\n  init_args:\n    num_context: {N}\n"
    )
    return path


@pytest.mark.parametrize("config", ["contextual_block.yaml", "contextual_block_skip.yaml"])
def test_probes_in_a_short_fit(tmp_path, config):
    args = ["fit", f"--config={CONFIGS / config}", f"--config={probes_yaml(tmp_path)}"]
    cli = run_cli(args + tiny_args(tmp_path, steps=6))
    results = {}
    for probe in cli.trainer.callbacks:
        if isinstance(probe, DeltaWEquivalence | DeltaWConvergence | FinetuneComparison):
            assert probe.last_step == 6
            results.update(probe.last_results)
    # Theorem 2.2 in float32: the two losses agree and the predictions to rounding
    assert results["dw/max_abs_diff"] < 1e-4 and results["dw/max_rel_diff"] < 1e-4
    assert math.isclose(results["dw/loss_context"], results["dw/loss_delta_w"], rel_tol=1e-5)
    assert 0 < results["dw/update_ratio"] < 1  # softmax updates shrink as the context grows
    for i in range(1, N + 1):
        assert math.isfinite(results[f"ft/sgd_loss_i{i}"] + results[f"ft/dw_loss_i{i}"])
    scalars = read_scalars(tmp_path)
    assert {0, 3, 6} <= set(scalars["dw/max_abs_diff"]) and 6 in scalars["ft/sgd_loss_i1"]
    assert {"dw/convergence", "ft/comparison"} <= image_tags(tmp_path)


def test_finetune_matches_per_task_sgd_and_leaves_the_model_alone():
    """The vmapped SGD on W equals plain autograd SGD run task by task on copies."""
    torch.manual_seed(0)
    block = ContextualBlock(3, num_heads=2, mlp_width=8).double()
    before = copy.deepcopy(block.state_dict())
    batch = LinearRegression(3, "normal").sample(4, N, seeded_generator("cpu", 0), torch.float64)
    probe = FinetuneComparison(lr=0.05)
    with torch.no_grad():  # as the probe base calls it
        out = probe.compute(block, batch)
    expected = torch.zeros(N, dtype=torch.float64)
    for b in range(len(batch)):  # the reference: one task at a time, torch.optim.SGD
        task = copy.deepcopy(block)
        sgd = torch.optim.SGD([task.mlp.W], lr=0.05)
        for i in range(N):
            example = task(
                batch.context_x[b : b + 1, :0],
                batch.context_y[b : b + 1, :0],
                batch.context_x[b : b + 1, i],
            )
            sgd.zero_grad()
            (0.5 * (example - batch.context_y[b, i]) ** 2).sum().backward()
            sgd.step()
            with torch.no_grad():
                test = task(
                    batch.context_x[b : b + 1, :0],
                    batch.context_y[b : b + 1, :0],
                    batch.query_x[b : b + 1],
                )
            expected[i] += (0.5 * (test - batch.query_y[b]) ** 2).sum()
    assert torch.allclose(out["sgd_loss"], expected, rtol=1e-12, atol=1e-12)
    # the Delta-W loss after i examples equals the block's in-context loss on c_1..c_i
    for i in range(1, N + 1):
        p = batch.prefix(i)
        direct = (0.5 * (block(p.context_x, p.context_y, p.query_x) - p.query_y) ** 2).sum()
        assert torch.isclose(out["dw_loss"][i - 1], direct, rtol=1e-10)
    for name, value in block.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_probes_reject_other_models():
    from icl_lightning.models import LSA

    batch = LinearRegression(3).sample(2, N, seeded_generator("cpu", 0))
    with pytest.raises(ValueError, match="ContextualBlock"):
        DeltaWEquivalence().compute(LSA(3), batch)


def one_and_two_processes_agree(tmp_path, config: str) -> dict[str, float]:
    """``validate`` with ``config`` and the three probes (float64, 37 tasks in chunks of 8:
    uneven shares) on 1 CPU process and on 2 (gloo): their ``dw/`` and ``ft/`` scalars (not
    the ``/compare/`` copies) agree tag for tag; the 1-process scalars."""
    probes = probes_yaml(tmp_path, dtype="float64", num_tasks=37, batch_size=8)
    scalars = {}
    for devices in (1, 2):
        save_dir = tmp_path / f"devices{devices}"
        args = [
            *cpu_validate_args(devices, save_dir),
            f"--config={CONFIGS / config}",
            f"--config={probes}",
            "--data.init_args.num_val_tasks=16",
        ]
        if devices == 1:
            run_cli(args)
        else:  # DDP re-launches the command, so it needs a process of its own
            run_cli_subprocess(args, cwd=tmp_path)
        scalars[devices] = {
            tag: values[0]
            for tag, values in read_scalars(save_dir).items()
            if tag.split("/")[0] in ("dw", "ft") and "/compare/" not in tag  # not the copies
        }
    assert scalars[1].keys() == scalars[2].keys()
    for tag, value in scalars[1].items():  # TensorBoard keeps float32
        # the max_*_diff are float64 rounding errors (~1e-16): the shares' matrix products
        # have other row counts, so they agree to rounding, not bit for bit
        rounding = 1e-13 if "max_" in tag else 1e-30
        assert math.isclose(scalars[2][tag], value, rel_tol=1e-6, abs_tol=rounding), tag
    return scalars[1]


def test_ddp_two_processes_match_one(tmp_path):
    """Sharding + all-reduce (sums) + all_gather (maxima): 2 gloo processes == 1 process."""
    scalars = one_and_two_processes_agree(tmp_path, "contextual_block.yaml")
    assert len(scalars) == 5 + 4 + 1 + 2 * N  # equivalence, convergence, finetuning


def one_probe_yaml(tmp_path, name: str, **init_args) -> str:
    """A config holding only the probe ``name`` with ``init_args`` (YAML flow values)."""
    args = ", ".join(f"{k}: {v}" for k, v in {"num_tasks": 32, **init_args}.items())
    path = tmp_path / "probe.yaml"
    path.write_text(
        f"trainer:\n  callbacks:\n    - class_path: icl_lightning.callbacks.{name}\n"
        f"      init_args: {{{args}}}\n"
    )
    return f"--config={path}"


@pytest.mark.parametrize(
    ("probe_args", "data_N", "named"),
    [({}, 1, "data.init_args.num_context=1"), ({"num_context": 1}, 6, "Convergence.num_context=1")],
)
def test_convergence_on_one_context_point_is_a_usage_error(
    tmp_path, capsys, probe_args, data_N, named
):
    """||Delta W_2 - Delta W_1|| needs N >= 2: exit 2 naming the option, before any file."""
    logs = tmp_path / "logs"
    args = ["fit", f"--config={CONFIGS / 'contextual_block.yaml'}"]
    args += [one_probe_yaml(tmp_path, "DeltaWConvergence", **probe_args)]
    args += [*tiny_args(logs), f"--data.init_args.num_context={data_N}"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(args)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
    assert not logs.exists()


def test_finetune_on_one_context_point_measures_one_step(tmp_path):
    """M = 1 is a legal comparison: one SGD step against Delta W_1."""
    args = ["fit", f"--config={CONFIGS / 'contextual_block.yaml'}"]
    args += [one_probe_yaml(tmp_path, "FinetuneComparison"), *tiny_args(tmp_path, steps=2)]
    cli = run_cli([*args, "--data.init_args.num_context=1"])
    results = cli.trainer.callbacks[0].last_results
    assert {"ft/loss_i0", "ft/sgd_loss_i1", "ft/dw_loss_i1"} <= set(results)
    assert "ft/sgd_loss_i2" not in results
    assert all(math.isfinite(v) for v in results.values())
    assert results["ft/sgd_loss_i1"] != results["ft/loss_i0"]


def test_finetune_warns_once_where_sgd_diverges(tmp_path):
    """Inputs scaled by 1e4 make SGD at lr 0.01 blow up: one warning over three measurements,
    naming lr and the first example i whose test loss is not finite (as logged)."""
    task = (
        "{class_path: icl_lightning.data.LinearRegression, init_args: {input_dim: 4, "
        "input_distribution: normal, input_range: 10000.0}}"
    )
    probe = one_probe_yaml(tmp_path, "FinetuneComparison", every_n_steps=3, task=task)
    args = ["fit", f"--config={CONFIGS / 'contextual_block.yaml'}", probe]
    with pytest.warns(UserWarning, match="SGD on W diverged") as warned:
        cli = run_cli([*args, *tiny_args(tmp_path, steps=6), f"--data.init_args.num_context={N}"])
    messages = [str(w.message) for w in warned if "SGD on W diverged" in str(w.message)]
    results = cli.trainer.callbacks[0].last_results
    first = min(i for i in range(1, N + 1) if not math.isfinite(results[f"ft/sgd_loss_i{i}"]))
    assert len(messages) == 1
    assert "lr=0.01" in messages[0] and f"from example i = {first}" in messages[0]
    assert all(math.isfinite(results[f"ft/dw_loss_i{i}"]) for i in range(1, N + 1))
