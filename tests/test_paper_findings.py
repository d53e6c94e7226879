"""Whole training runs that check the papers' findings (slow: ``make test-all``).

These train the shipped configs to the end on CPU and assert what they are meant to show.
"""

import pytest
from conftest import CONFIGS, run_cli

pytestmark = pytest.mark.slow


def _fit(config: str, tmp_path) -> dict[str, float]:
    args = [
        "fit",
        f"--config={CONFIGS / config}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    cli = run_cli(args)
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def test_demo_learns_in_context_and_aligns_with_one_gd_step(tmp_path):
    m = _fit("demo.yaml", tmp_path)
    assert m["val/loss"] < 0.3 * m["val/zero_loss"]
    assert m["gd/loss_ratio"] < 1.05 and m["gd/model_cos"] > 0.99


def test_lsa_linear_reproduces_paper_a_figure_2(tmp_path):
    """A trained recurrent LSA layer == one optimal-eta GD step (loss within 2%, cos >= 0.99)."""
    m = _fit("lsa_linear.yaml", tmp_path)
    assert m["gd/loss_ratio"] < 1.02
    assert m["gd/model_cos"] >= 0.99
