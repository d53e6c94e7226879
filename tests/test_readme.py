"""The README's worked examples run as written."""

import re
import sys

from conftest import CONFIGS, ROOT, run_cli, tiny_args

README = (ROOT / "README.md").read_text()


def _block_starting_with(first_line: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return block


def test_readme_model_subclass_trains_through_the_cli(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(_block_starting_with("# my_models.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["fit", f"--config={CONFIGS / 'demo.yaml'}", "--model", "my_models.RidgeModule"]
    cli = run_cli([*args, *tiny_args(tmp_path)])
    assert type(cli.model).__name__ == "RidgeModule"
    metrics = cli.trainer.callback_metrics
    assert metrics["val/loss"] < 0.5 * metrics["val/zero_loss"]  # ridge uses its context
    sys.modules.pop("my_models", None)
