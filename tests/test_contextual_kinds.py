"""``icl-reproduce --only contextual_kinds`` (issue 31, item 4): paper B's block with every kind
of contextual layer, its variants, its one table with measured verdicts, and the runner end to
end on a tiny size."""

import dataclasses
import json
import math

import pytest
import yaml
from conftest import CONFIGS
from test_reproduce import write_run

from icl_lightning.models.contextual_layers import KINDS
from icl_lightning.reproduce import cli
from icl_lightning.reproduce.experiments import CONTEXTUAL_KINDS
from icl_lightning.reproduce.kinds import fall_verdict, finetune_verdict
from icl_lightning.reproduce.report import write_report
from icl_lightning.reproduce.runs import Run


def test_every_kind_at_both_lengths_with_its_overlays_options():
    """Softmax and linear attention (8 heads of 4) and every recurrent or state-space kind at
    N = 100 and 400; each variant sets its overlay's own options; --quick runs N = 100."""
    kinds = ["softmax", "linear", *(k for k in KINDS if k != "attention")]
    variants = CONTEXTUAL_KINDS.variants
    assert list(variants) == [f"{k}_N{N}" for N in (100, 400) for k in kinds]
    lstm = yaml.safe_load((CONFIGS / "contextual_block_lstm.yaml").read_text())
    assert lstm.pop("config") == "contextual_block.yaml"
    assert variants["lstm_N400"] == {**lstm, "data.init_args.num_context": 400}
    assert variants["linear_N100"]["model.model.init_args.attention"] == "linear"
    assert variants["softmax_N100"]["model.model.init_args.num_heads"] == 8
    assert CONTEXTUAL_KINDS.variant_names(quick=True) == [f"{k}_N100" for k in kinds]
    assert CONTEXTUAL_KINDS.full_steps == 5000  # paper B's


@pytest.mark.parametrize(
    "ratio,expected",
    [(0.02, "updates fall (50x)"), (0.1, "updates fall (10x)"), (0.5, "do not fall 10x (2x)")],
)
def test_the_fall_is_a_measurement(ratio, expected):
    assert fall_verdict(ratio) == expected


@pytest.mark.parametrize(
    "losses,expected",
    [
        ((2.0, 1.5, 0.3), "both lower the loss, dW lower"),
        ((2.0, 0.1, 0.9), "both lower the loss, SGD lower"),
        ((2.0, 1.9, 2.5), "only SGD lowers the loss, alike"),
        ((1.0, 1.2, 1.1), "neither lowers the loss, alike"),
    ],
)
def test_finetuning_against_delta_w(losses, expected):
    assert finetune_verdict(*losses) == expected


def kind_run(ratio: float, error: float, before: float, sgd: float, dw: float, N: int) -> dict:
    """The tags of one fake run (two measurements; the table reads the last)."""
    tags = {
        "train/loss": [(0, 2.0), (300, 0.5)],
        "val/loss": [(0, 2.0), (300, 0.25)],
        "dw/max_abs_diff": [(0, 1.0), (300, error)],
        "dw/max_rel_diff": [(0, 1.0), (300, error / 2)],
        "dw/update_ratio": [(0, 1.0), (300, ratio)],
        "ft/loss_i0": [(300, before)],
        f"ft/sgd_loss_i{N}": [(300, sgd)],
        f"ft/dw_loss_i{N}": [(300, dw)],
        "ft/sgd_loss_i1": [(300, before)],
    }
    tags.update({f"dw/update_i{i}": [(300, ratio ** (i / (N - 1)))] for i in range(1, N)})
    return tags


def test_one_table_over_the_kinds_with_measured_verdicts(tmp_path):
    """Two fake seeds of softmax attention (updates fall 50x, Delta W far below SGD, an absolute
    equivalence error above 1e-5 but not over the output's rms) and of the GRU (no fall, only
    SGD lowers the loss): one row each, mean ± std over seeds, the verdicts, the figure of the
    updates; kinds without runs are left out of the table."""
    e, logs = CONTEXTUAL_KINDS, tmp_path / "logs"
    for seed in (0, 1):
        softmax = kind_run(0.02, 1e-5 * (1 + seed), 2.0, 1.5, 0.3, 10)  # large outputs
        gru = kind_run(0.8, 5e-7, 2.0, 1.9, 2.5 + seed, 10)
        write_run(Run(e, "softmax_N100", seed, True, logs).directory, softmax)
        write_run(Run(e, "gru_N100", seed, True, logs).directory, gru)
    out = tmp_path / "report"
    results = write_report([e], 2, logs, out, quick=True)
    rows = results["contextual_kinds"]["kinds_updates"]
    assert list(rows) == ["softmax_N100", "gru_N100"]
    softmax, gru = rows["softmax_N100"], rows["gru_N100"]
    assert softmax["N"] == 10 and softmax["seeds"] == 2
    assert math.isclose(softmax["values"]["equivalence error"]["mean"], 1.5e-5, rel_tol=1e-5)
    # exact: the error over the output's rms is 7.5e-6
    assert softmax["verdicts"] == "Thm 2.2 exact; updates fall (50x); both lower the loss, dW lower"
    assert math.isclose(gru["values"]["W + dW_N"]["std"], 0.5, rel_tol=1e-6)
    assert gru["verdicts"] == (
        "Thm 2.2 exact; do not fall 10x (1.25x); only SGD lowers the loss, alike"
    )
    per_variant = {r["label"]: r for r in results["contextual_kinds"]["gru_N100"]}
    fall = per_variant["||dW_N - dW_{N-1}|| / ||dW_2 - dW_1||"]
    assert fall["verdict"] == "do not fall 10x (1.25x)"  # the same words at every scale
    text = (out / "report.md").read_text()
    row = "| gru | 10 | 2 | 0.25 ± 0 | 5.000e-07 ± 0 / 2.500e-07 ± 0 | 0.8 ± 0 | 2 ± 0 → 1.9 ± 0 /"
    assert row in text
    assert (out / "contextual_kinds_kinds_updates.png").stat().st_size > 1000
    assert json.loads((out / "results.json").read_text()) == results


@pytest.mark.slow
def test_quick_experiment_end_to_end_through_the_runner(tmp_path):
    """``icl-reproduce --quick --only contextual_kinds`` shrunk to two kinds (softmax attention
    and the LSTM), N = 8, 12 steps: both runs train in their own process, every probe logs, and
    the report's table has a row with verdicts for each kind."""
    tiny = dataclasses.replace(
        CONTEXTUAL_KINDS,
        quick_steps=12,
        quick_variants=("softmax_N100", "lstm_N100"),
        quick={
            "data.init_args.num_context": 8,
            "data.init_args.num_val_tasks": 32,
            "data.init_args.batches_per_epoch": 6,
            "callbacks.DeltaWEquivalence.every_n_steps": 6,
            "callbacks.DeltaWEquivalence.num_tasks": 16,
            "callbacks.DeltaWConvergence.every_n_steps": 12,
            "callbacks.DeltaWConvergence.num_tasks": 16,
            "callbacks.FinetuneComparison.every_n_steps": 12,
            "callbacks.FinetuneComparison.num_tasks": 16,
        },
    )
    args = ["--quick", "--seeds", "1", "--jobs", "2"]
    args += ["--logs", str(tmp_path / "logs"), "--out", str(tmp_path / "reports")]
    cli.main(args, experiments=[tiny])
    results = json.loads((tmp_path / "reports" / "quick" / "results.json").read_text())
    rows = results["contextual_kinds"]["kinds_updates"]
    assert list(rows) == ["softmax_N100", "lstm_N100"]
    for row in rows.values():
        assert row["N"] == 8 and row["verdicts"].startswith("Thm 2.2 exact; ")
        assert row["values"]["relative equivalence error"]["mean"] < 1e-5
    text = (tmp_path / "reports" / "quick" / "report.md").read_text()
    assert "| lstm | 8 | 1 |" in text
