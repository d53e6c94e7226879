"""The worked examples of the README and docs/extending.md run as written."""

import re
import sys

from conftest import CONFIGS, ROOT, run_cli, tiny_args

README = (ROOT / "README.md").read_text() + (ROOT / "docs" / "extending.md").read_text()


def _block_starting_with(first_line: str, language: str = "python") -> str:
    """The one ```<language> block of the two pages whose first line is ``first_line``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return block


def test_readme_model_trains_through_the_cli(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(_block_starting_with("# my_models.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["fit", f"--config={CONFIGS / 'demo.yaml'}", "--model.model", "my_models.RidgeReadout"]
    cli = run_cli([*args, "--model.model.init_log_lam=-2", *tiny_args(tmp_path)])
    assert type(cli.model.model).__name__ == "RidgeReadout"
    assert abs(cli.model.model.log_lam.item() + 2) < 0.1  # the model's own option, applied
    metrics = cli.trainer.callback_metrics
    # no context-free predictor beats the zero predictor on these tasks; ridge does
    assert metrics["val/loss"] < 0.75 * metrics["val/zero_loss"]
    sys.modules.pop("my_models", None)


def test_readme_module_subclass_trains_the_configured_model(tmp_path, monkeypatch):
    (tmp_path / "my_modules.py").write_text(_block_starting_with("# my_modules.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["fit", f"--config={CONFIGS / 'demo.yaml'}", "--model", "my_modules.AbsoluteErrorModule"]
    cli = run_cli([*args, *tiny_args(tmp_path)])
    assert type(cli.model).__name__ == "AbsoluteErrorModule"
    assert type(cli.model.model).__name__ == "LSA" and cli.model.model.recurrent
    sys.modules.pop("my_modules", None)


def test_readme_task_subclass_and_its_yaml_train(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(_block_starting_with("# my_tasks.py"))
    config = tmp_path / "quadratic.yaml"
    config.write_text(_block_starting_with("# quadratic.yaml", language="yaml"))
    monkeypatch.syspath_prepend(str(tmp_path))
    cli = run_cli(["fit", f"--config={config}", *tiny_args(tmp_path)])
    assert type(cli.datamodule.task).__name__ == "Quadratic"
    assert any(name.startswith("deep/") for name in cli.trainer.callback_metrics)
    sys.modules.pop("my_tasks", None)


def test_readme_probe_sees_a_learner_read_its_pairs(tmp_path, monkeypatch):
    (tmp_path / "my_probes.py").write_text(_block_starting_with("# my_probes.py"))
    (tmp_path / "my_models.py").write_text(_block_starting_with("# my_models.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["fit", f"--config={CONFIGS / 'demo.yaml'}", "--model.model", "my_models.RidgeReadout"]
    cli = run_cli([*args, "--trainer.callbacks+=my_probes.ShuffledLabels", *tiny_args(tmp_path)])
    metrics = cli.trainer.callback_metrics
    # ridge regression on d = 5, N = 20 fits the true pairs; y_{i-1} next to x_i defeats it
    assert metrics["shuffled/loss_true"] < 0.25 * metrics["shuffled/loss_rolled"]
    assert metrics["shuffled/loss_rolled"] > 0.5 * metrics["val/zero_loss"]
    sys.modules.pop("my_probes", None)
    sys.modules.pop("my_models", None)
