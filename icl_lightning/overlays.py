"""Config overlays: a config whose ``config:`` key names a base config it changes.

``configs/contextual_block_skip.yaml`` is ``config: contextual_block.yaml`` plus the keys that
differ. The file is read as if its base had been given first on the command line, and the rest
of the file as a second ``--config`` after it: ``--config base.yaml --config <the rest>``. So
every other key of the file, wherever it stands, changes the base key by key, the way one more
``--config`` or a dotted command-line option does:

- a nested section merges: ``trainer: {max_steps: 10}`` changes ``trainer.max_steps`` and keeps
  the base's callbacks and clipping; ``data: {batch_size: 32}`` keeps the base's task;
- a dotted key changes one value: ``model.init_args.model.init_args.mlp_skip: true``;
- a key ending in ``+`` appends to the base's list, as ``--trainer.callbacks+=...`` does:
  ``trainer.callbacks+: [{class_path: ..., init_args: ...}]``;
- a list given without ``+`` replaces the base's list, and a ``class_path`` other than the
  base's starts that class's options afresh (as on the command line).

A base is a path relative to the file that names it (or absolute); a base may name a base of
its own. A ``config:`` that is not a path, a base that is missing, not YAML or not a valid
config is a usage error naming the base file. In any config, a key given twice (two
``trainer:`` sections, of which YAML would keep the last) is a usage error naming the file.

The parser is LightningCLI's with one private jsonargparse method overridden
(``_load_config_parser_mode``, which turns a config file's text into options) and two called
(``_apply_actions``, ``merge_config``, as jsonargparse's own ``--config`` does); jsonargparse is
held to its tested minor version in ``pyproject.toml``.
"""

from argparse import ArgumentError
from contextlib import contextmanager
from pathlib import Path

import yaml
from jsonargparse import ActionConfigFile, Namespace, get_loader
from jsonargparse._util import merge_config
from lightning.pytorch.cli import LightningArgumentParser

#: the key of a config that names its base (LightningCLI's ``--config``)
BASE_KEY = "config"


def base_of(overlay: dict, where: str) -> str:
    """The base config that ``overlay``'s ``config:`` names; TypeError (naming ``where``) unless
    it is a path."""
    base = overlay[BASE_KEY]
    if not isinstance(base, str) or not base.strip() or "\n" in base:
        raise TypeError(
            f"{where}: `{BASE_KEY}: {base!r}` is not a path: expected the file name of a base "
            f"config, relative to this file (e.g. `{BASE_KEY}: contextual_block.yaml`)."
        )
    return base


def repeated_keys(node: yaml.Node, prefix: str = "") -> list[str]:
    """``key (lines a and b)`` for each key that a mapping of the YAML tree ``node`` holds twice
    (YAML keeps the last one silently: a second ``trainer:`` section would drop the first)."""
    if isinstance(node, yaml.SequenceNode):
        return [found for item in node.value for found in repeated_keys(item, prefix)]
    if not isinstance(node, yaml.MappingNode):
        return []
    found, lines = [], {}
    for key, value in node.value:
        name, line = f"{prefix}{key.value}", key.start_mark.line + 1
        if isinstance(key, yaml.ScalarNode) and key.value != "<<":  # << merges, YAML's own
            if name in lines:
                found.append(f"{name} (lines {lines[name]} and {line})")
            lines.setdefault(name, line)
        found += repeated_keys(value, f"{name}.")
    return found


@contextmanager
def errors_naming(parser, where: str):
    """Inside: an error of ``parser`` (jsonargparse exits by default) becomes a TypeError whose
    message starts with ``where``."""
    exit_on_error, parser.exit_on_error = parser.exit_on_error, False
    try:
        yield
    except (ArgumentError, TypeError, KeyError, ValueError) as error:
        problem = error.args[0] if isinstance(error, KeyError) else str(error)  # unquoted
        problem = str(problem).removeprefix(f'Parser key "{BASE_KEY}": ')
        raise TypeError(f"{where}: {problem}") from error
    finally:
        parser.exit_on_error = exit_on_error


class OverlayParser(LightningArgumentParser):
    """LightningCLI's parser, reading a config with a ``config:`` key as its base config followed
    by the rest of the file (see the module's docstring)."""

    def _load_config_parser_mode(self, content, path="", ext_vars=None, prev_cfg=None):
        where = Path(path).absolute() if path else "a config string"  # jsonargparse: cwd = its dir
        try:
            loaded = get_loader(self.parser_mode)(content)
            repeated = repeated_keys(yaml.compose(content, Loader=yaml.SafeLoader))
        except yaml.YAMLError as error:
            problem = str(error).splitlines()[0]
            raise TypeError(
                f"{where} is not valid YAML ({problem}): expected a YAML mapping of options, as "
                "in configs/."
            ) from error
        if repeated:
            raise TypeError(
                f"{where} gives {', '.join(repeated)} twice; YAML would keep only the last: "
                "give each key once (one section, or dotted keys)."
            )
        if not isinstance(loaded, dict):
            raise TypeError(
                f"{where} holds {'nothing' if loaded is None else repr(loaded)}: expected a YAML "
                "mapping of options, as in configs/."
            )
        if BASE_KEY not in loaded:
            return super()._load_config_parser_mode(content, path, ext_vars, prev_cfg)
        base = base_of(loaded, str(where))
        del loaded[BASE_KEY]
        cfg = prev_cfg.clone() if prev_cfg else Namespace()
        # as `--config <base>` (its own base first, then its keys) ...
        with errors_naming(
            self, f"{where}: its base `{BASE_KEY}: {base}` ({Path(base).absolute()})"
        ):
            ActionConfigFile.apply_config(self, cfg, BASE_KEY, base)
            self.validate(cfg, skip_required=True)
        # ... then the rest as a second `--config`: each key over the base's value (prev_cfg)
        with errors_naming(self, str(where)):
            merged = merge_config(self, self._apply_actions(loaded, prev_cfg=cfg), cfg)
            self.validate(merged, skip_required=True)
        return merged
