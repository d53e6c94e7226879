"""Every shell command that README.md and docs/*.md show runs as written.

The commands are read from the markdown's fenced ``bash`` blocks (a trailing ``\\`` joins
lines, ``#`` starts a comment) and run from a temporary working directory that holds
``configs/`` (a copy) and the files the same page writes in its ``# <file>`` code blocks:

- ``icl-lightning ...`` (or ``python -m icl_lightning ...``) of the README trains through the
  real CLI with tiny sizes appended (``--trainer.max_steps 2`` and smaller batches); those of
  the other pages (reruns of the papers' experiments, costlier even at tiny sizes) are parsed
  with ``--print_config`` here and trained by the slow test. ``--help`` and ``--print_config``
  must exit 0. A command that needs a GPU this machine lacks, or several processes, is parsed;
  the slow test runs the multi-process ones on CPU processes.
- A ``--ckpt_path`` (or ``<run>/...``) that does not exist yet is made by a tiny ``fit`` of the
  command's config first, as a reader would have trained it.
- Other Python entry points (a script, ``python -m <module>``, a console script of
  pyproject.toml) must accept their options: their argument parser runs, the program does not.
- ``make <target>``: the target exists, and its ``icl-lightning``/Python recipe lines are
  checked as above; ``srun``/``torchrun`` launch an ``icl-lightning`` command that is parsed;
  ``pip install -e '.[extra]'`` names an extra of pyproject.toml; ``tensorboard`` is installed.

A command no rule covers fails the test, so a new kind of command needs a rule here.
"""

import argparse
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tomllib
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from icl_lightning.cli import main as icl_lightning

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TINY = [
    "--trainer.max_steps=2",
    "--trainer.enable_model_summary=false",
    "--data.init_args.batch_size=32",
    "--data.init_args.num_val_tasks=64",
    "--data.init_args.batches_per_epoch=2",
]
#: where a ``<run>`` placeholder points, and the config trained for it when the command names
#: no shipped config
RUN = "runs/example"
RUN_CONFIG = "configs/lsa_linear.yaml"
TOOLING = {"pytest", "ruff", "pip", "test", "touch", "rm", "mkdir"}


def shell_commands(page: Path) -> list[tuple[int, str]]:
    """``(line number, command)`` for every command of the page's fenced bash blocks."""
    text = page.read_text()
    commands = []
    for block in re.finditer(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.S | re.M):
        first_line = text.count("\n", 0, block.start(1)) + 1
        pending, start = "", None
        for offset, line in enumerate(block.group(1).splitlines()):
            if start is None:
                start = first_line + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command = (pending + line).strip()
            if shlex.split(command, comments=True):
                commands.append((start, command))
            pending, start = "", None
    return commands


def code_files(page: Path) -> dict[str, str]:
    """The page's code blocks whose first line is ``# <file name>``, by file name."""
    files = {}
    for block in re.findall(r"^```(?:python|yaml)\n(.*?)^```", page.read_text(), re.S | re.M):
        named = re.match(r"# ([\w.]+\.(?:py|yaml))\b", block)
        if named:
            files[named.group(1)] = block
    return files


CASES = [
    pytest.param(page, command, id=f"{page.relative_to(ROOT)}:{line}")
    for page in PAGES
    for line, command in shell_commands(page)
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A reader's working directory: ``configs/`` and the page's own files, importable."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")  # a copy: nothing writes into ROOT
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in list(sys.modules):  # the page's modules are per test
        module_file = getattr(sys.modules[name], "__file__", None) or ""
        if module_file.startswith(str(tmp_path)):
            del sys.modules[name]


def option(args: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in ``args`` (the last one)."""
    value = None
    for k, arg in enumerate(args):
        if arg == name and k + 1 < len(args):
            value = args[k + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def needs_other_hardware(args: list[str]) -> bool:
    """Whether the command asks for a GPU this machine lacks, or for several processes."""
    gpu = option(args, "--trainer.accelerator") in {"gpu", "cuda"}
    devices = option(args, "--trainer.devices")
    several = devices not in {None, "1", "auto"} or option(args, "--trainer.num_nodes")
    return (gpu and not torch.cuda.is_available()) or bool(several)


def make_prerequisites(args: list[str], train: bool) -> None:
    """Make the ``--ckpt_path`` (and a ``--config`` in the ``<run>`` folder) that ``args`` name
    by a tiny ``fit`` of the command's shipped config, when they do not exist yet; only to parse
    (not ``train``), the ``<run>`` folder's config is a copy of ``RUN_CONFIG``."""
    config = option(args, "--config")
    in_run = config is not None and config.startswith(RUN + "/")
    if not train:
        if in_run:
            Path(config).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(RUN_CONFIG, config)
        return
    ckpt = option(args, "--ckpt_path")
    if ckpt is None or Path(ckpt).exists():
        return
    shipped = config if config and not in_run else RUN_CONFIG
    name = "--trainer.logger.init_args.name=prereq"
    icl_lightning(["fit", f"--config={shipped}", *TINY, "--trainer.max_steps=1", name])
    (run,) = Path("logs/prereq").glob("version_*")
    Path(ckpt).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "checkpoints" / "last.ckpt", ckpt)
    if in_run:
        Path(config).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / "config.yaml", config)


def exits_zero(function, *args) -> None:
    with pytest.raises(SystemExit) as stopped:
        function(*args)
    assert stopped.value.code in (0, None), f"exit {stopped.value.code}"


def run_icl_lightning(args: list[str], train: bool) -> None:
    """One ``icl-lightning`` command as the reader would run it, at tiny sizes (``train``), or
    parsed with its config (``--print_config``)."""
    args = [arg.replace("<run>", RUN) for arg in args]
    if {"--help", "-h", "--print_config"} & set(args):
        exits_zero(icl_lightning, args)
        return
    train = train and not needs_other_hardware(args)
    make_prerequisites(args, train)
    if train:
        icl_lightning([*args, *TINY])
    else:
        exits_zero(icl_lightning, [*args, *TINY, "--print_config"])


class _Parsed(Exception):
    """Raised once a program's argument parser accepted its options."""


@contextmanager
def parse_only(argv: list[str]):
    """Run a program up to its argument parser: its options must parse (a misspelt one exits
    2), its work does not start."""
    parse_args, parse_known_args = (
        argparse.ArgumentParser.parse_args,
        argparse.ArgumentParser.parse_known_args,
    )
    depth = 0  # parse_args and subparsers call parse_known_args: stop at the outermost only

    def stop_after(parse):
        def parse_then_stop(self, args=None, namespace=None):
            nonlocal depth
            depth += 1
            try:
                parsed = parse(self, args, namespace)
            finally:
                depth -= 1
            if depth == 0:
                raise _Parsed
            return parsed

        return parse_then_stop

    old_argv, sys.argv = sys.argv, argv
    argparse.ArgumentParser.parse_args = stop_after(parse_args)
    argparse.ArgumentParser.parse_known_args = stop_after(parse_known_args)
    try:
        with pytest.raises(_Parsed):
            yield
    finally:
        argparse.ArgumentParser.parse_args = parse_args
        argparse.ArgumentParser.parse_known_args = parse_known_args
        sys.argv = old_argv


def run_python(words: list[str], train: bool) -> None:
    """``python <script> ...`` or ``python -m <module> ...``."""
    if words[0] == "-m":
        module, args = words[1], words[2:]
        if module == "icl_lightning":
            return run_icl_lightning(args, train)
        with parse_only([module, *args]):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script = ROOT / words[0]
        assert script.is_file(), f"{words[0]} does not exist"
        with parse_only([str(script), *words[1:]]):
            runpy.run_path(str(script), run_name="__main__")


def run_make(target: str, train: bool) -> None:
    """The target exists; its icl-lightning and Python recipe lines run as above."""
    # as a user types it: not as a sub-make of `make test` (which would print its directory)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert dry.returncode == 0, dry.stderr
    for line in dry.stdout.splitlines():
        words = shlex.split(line)
        program = words[2] if words[1:2] == ["-m"] else Path(words[0]).name
        if program not in {"make", "venv", *TOOLING}:
            dispatch(words, train)


def dispatch(words: list[str], train: bool) -> None:
    """Run one command, split into words, by the rules of this module's docstring
    (``icl-lightning`` commands train only with ``train``)."""
    while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value prefixes
        words = words[1:]
    program, args = Path(words[0]).name, words[1:]
    scripts = PYPROJECT["project"].get("scripts", {})
    if program == "icl-lightning":
        run_icl_lightning(args, train)
    elif program in scripts:
        module, function = scripts[program].split(":")
        main = getattr(__import__(module, fromlist=[function]), function)
        with parse_only([program, *args]):
            main()
    elif re.fullmatch(r"python3?(\.\d+)?", program):
        run_python(args, train)
    elif program == "make":
        run_make(args[0], train)
    elif program in {"srun", "torchrun"}:
        start = args.index("icl-lightning") + 1 if "icl-lightning" in args else None
        if start is None:
            start = args.index("icl_lightning") + 1  # torchrun ... -m icl_lightning
        exits_zero(icl_lightning, [*args[start:], "--print_config"])
    elif program == "pip":
        extras = re.findall(r"\[([\w,-]+)\]", " ".join(args))
        known = PYPROJECT["project"].get("optional-dependencies", {})
        for extra in ",".join(extras).split(","):
            assert extra in known, f"pyproject.toml has no extra [{extra}]"
    elif program == "tensorboard":
        assert shutil.which("tensorboard", path=str(Path(sys.executable).parent)), program
    elif program == "bash":
        assert (ROOT / args[0]).is_file(), f"{args[0]} does not exist"
    else:
        pytest.fail(f"no rule in tests/test_docs.py runs a `{program}` command")


def test_the_pages_show_commands():
    """The extraction finds the README's two opening commands (a broken regex finds none)."""
    readme = [command for _, command in shell_commands(ROOT / "README.md")]
    opening = [shlex.split(command, comments=True) for command in readme[:2]]
    assert opening == [["make", "demo"], ["make", "test"]]
    assert len(CASES) > 10


def write_page_files(page: Path, workdir: Path) -> None:
    for name, text in code_files(page).items():
        (workdir / name).write_text(text)


@pytest.mark.parametrize(("page", "command"), CASES)
def test_command_runs(page, command, workdir):
    write_page_files(page, workdir)
    dispatch(shlex.split(command, comments=True), train=page.name == "README.md")


def trains_elsewhere(case) -> bool:
    """Whether the default test only parsed this case's icl-lightning command."""
    page, command = case.values
    words = shlex.split(command, comments=True)
    cli = "icl-lightning" in words or "icl_lightning" in words
    return cli and (page.name != "README.md" or needs_other_hardware(words))


@pytest.mark.slow
@pytest.mark.parametrize(("page", "command"), [case for case in CASES if trains_elsewhere(case)])
def test_command_trains(page, command, workdir):
    """The commands parsed above train: at tiny sizes, several processes on CPU processes."""
    words = shlex.split(command, comments=True)
    if not needs_other_hardware(words):
        write_page_files(page, workdir)
        return dispatch(words, train=True)
    if option(words, "--trainer.accelerator") in {"gpu", "cuda"} and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    start = words.index("icl-lightning") + 1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "icl_lightning", *words[start:], *TINY],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_links_and_figures_exist(page):
    """Every relative link and image of the page names a file of the repository."""
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and t[0] != "#"]
    missing = [t for t in local if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"
