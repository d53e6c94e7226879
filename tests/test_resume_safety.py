"""A run is never written by two processes, never silently changed by a resume, and a failing
disk or writer ends with one message naming what is left to resume from (issue 29, items 3,
5, 6)."""

import errno
import fcntl
import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, ROOT, read_scalars, tiny_args
from tensorboard.summary.writer import record_writer

from icl_lightning.checkpointing import AtomicCheckpointIO
from icl_lightning.cli import main
from icl_lightning.run_directory import LOCK_FILE
from icl_lightning.run_lock import RunLock, RunLocked

_HOLD = """
import sys, time
from icl_lightning.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def _holder(lock_file) -> subprocess.Popen:
    """Another process holding ``lock_file``, once it has said so."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLD), str(lock_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def test_run_lock_names_its_live_owner_and_a_dead_owner_never_blocks(tmp_path):
    lock_file = tmp_path / "run" / ".fit.lock"
    holder = _holder(lock_file)
    try:
        with pytest.raises(RunLocked, match=rf"run is in use by pid {holder.pid} on .*-c"):
            RunLock(lock_file).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no release: the file stays behind
        holder.wait()
    assert lock_file.is_file()
    with RunLock(lock_file) as lock:  # the dead owner's file does not block
        assert lock.owner()["pid"] == os.getpid()
    assert not lock_file.exists()  # a release leaves no trace


# ---------------------------------------------------------------- the CLI, end to end
DEMO = str(CONFIGS / "demo.yaml")
NO_PROBES = "--trainer.callbacks=[]"


def _fit(steps: int, *extra: str) -> None:
    main(["fit", f"--config={DEMO}", *tiny_args(Path("logs"), steps=steps), NO_PROBES, *extra])


def _runs() -> list[Path]:
    return sorted(Path("logs").glob("*/version_*"))


def _digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content's hash."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _usage_error(capsys, *args: str) -> str:
    """The message of ``fit`` with ``args`` on the demo, which must be a usage error."""
    with pytest.raises(SystemExit) as exit_info:
        _fit(*args)
    err = capsys.readouterr().err
    error = err[err.find("error:") :].replace("\n", " ")
    assert exit_info.value.code == 2, err[-3000:]
    return error


def _steps(ckpt: Path) -> int:
    return torch.load(ckpt, weights_only=True)["global_step"]


def test_a_run_directory_in_use_is_refused_naming_its_owner(tmp_path, monkeypatch, capsys):
    """A second fit into a version another fit owns, and a resume of a run another process
    is writing, stop before writing anything; a new run passes over a version in use."""
    monkeypatch.chdir(tmp_path)
    _fit(2)
    (run,) = _runs()
    last = run / "checkpoints" / "last.ckpt"
    holder = _holder(run / LOCK_FILE)  # another process owns the run
    try:
        before = _digest(tmp_path)
        for extra in (["--trainer.logger.init_args.version=0"], [f"--ckpt_path={last}"]):
            error = _usage_error(capsys, 4, *extra)
            assert re.search(rf"the run directory \S*{run} is in use by pid {holder.pid}", error)
            assert _digest(tmp_path) == before  # nothing written, nothing changed
        _fit(2)  # a new run: the next version
        assert [r.name for r in _runs()] == ["version_0", "version_1"]
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    _fit(4, f"--ckpt_path={last}")  # its owner is gone: the stale lock file does not block
    assert _steps(last) == 4 and not (run / LOCK_FILE).exists()


@pytest.mark.slow
def test_two_fits_naming_one_version_at_once_never_write_one_run(tmp_path):
    """Two processes started together into one version: one trains, the other stops with a
    usage error naming the run, and the run holds one event file and one checkpoint."""
    args = ["fit", f"--config={DEMO}", *tiny_args(Path("logs"), steps=30), NO_PROBES]
    args += ["--trainer.logger.init_args.version=3", "--trainer.enable_progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "icl_lightning", *args]
    fits = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [fit.communicate(timeout=300)[1] for fit in fits]
    codes = sorted(fit.returncode for fit in fits)
    assert codes == [0, 2], errors
    (refused,) = [err for fit, err in zip(fits, errors, strict=True) if fit.returncode == 2]
    assert re.search(r"logs/demo/version_3 (is in use by pid \d+|already holds a run)", refused)
    run = tmp_path / "logs" / "demo" / "version_3"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    assert _steps(run / "checkpoints" / "last.ckpt") == 30


def test_resume_with_other_options_is_refused_unless_allowed(tmp_path, monkeypatch, capsys):
    """The checkpoint records the model and data options; a resume that changes them stops
    before writing, naming each; --allow_changes continues, keeping config.yaml and writing
    the new leg's config beside it."""
    monkeypatch.chdir(tmp_path)
    _fit(2)
    (run,) = _runs()
    last = run / "checkpoints" / "last.ckpt"
    recorded = torch.load(last, weights_only=True)["icl_run"]
    assert recorded["model"]["init_args"]["model"]["init_args"]["num_layers"] == 1
    assert recorded["data"]["init_args"]["num_context"] == 20
    changes = ["--model.model.init_args.init_scale=0.01", "--data.init_args.num_context=10"]
    before = _digest(tmp_path)
    error = _usage_error(capsys, 4, f"--ckpt_path={last}", *changes)
    assert "--model.init_args.model.init_args.init_scale: 0.002 -> 0.01" in error
    assert "--data.init_args.num_context: 20 -> 10" in error and "--allow_changes" in error
    assert _digest(tmp_path) == before
    first_config = (run / "config.yaml").read_text()
    _fit(4, f"--ckpt_path={last}", *changes, "--allow_changes=true")
    assert _steps(last) == 4 and (run / "config.yaml").read_text() == first_config
    assert "num_context: 10" in (run / "config-leg2.yaml").read_text()
    _fit(6, f"--ckpt_path={last}", *changes)  # the checkpoint now records the new options
    assert (run / "config-leg3.yaml").is_file() and _runs() == [run]


@pytest.mark.parametrize(
    ("limit", "reason"),
    [
        ([], "the checkpoint is at step 3, and --trainer.max_steps=3"),
        (
            ["--trainer.max_steps=-1", "--trainer.max_epochs=1"],
            "the checkpoint is at the end of epoch 1",
        ),
    ],
    ids=["max_steps", "max_epochs"],
)
def test_resume_with_nothing_to_train_changes_no_file(tmp_path, monkeypatch, caplog, limit, reason):
    monkeypatch.chdir(tmp_path)
    _fit(3, *limit)  # 3 steps: one epoch
    (run,) = _runs()
    before = _digest(tmp_path)
    _fit(3, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *limit)
    assert f"Nothing to train: {reason}" in caplog.text
    assert _digest(tmp_path) == before and _runs() == [run]


def test_ckpt_path_last_resumes_the_newest_run_or_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    error = _usage_error(capsys, 2, "--ckpt_path=last")
    assert "--ckpt_path=last: no last.ckpt to resume under logs/demo" in error
    with pytest.raises(SystemExit):  # nor validate an untrained model
        main(["validate", f"--config={DEMO}", *tiny_args(Path("logs")), "--ckpt_path=last"])
    assert "--ckpt_path=last: no last.ckpt" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*"))  # not silently a new run
    _fit(2)
    _fit(2)
    newest = _runs()[-1]
    _fit(4, "--ckpt_path=last")
    assert _steps(newest / "checkpoints" / "last.ckpt") == 4 and len(_runs()) == 2
    assert _steps(_runs()[0] / "checkpoints" / "last.ckpt") == 2


def test_resume_from_a_checkpoint_dirpath_continues_the_same_tensorboard_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    elsewhere = "--checkpoint.dirpath=saved"
    _fit(2, elsewhere)
    (run,) = _runs()
    _fit(4, elsewhere, "--ckpt_path=saved/last.ckpt")
    assert _runs() == [run] and _steps(Path("saved/last.ckpt")) == 4
    assert len(read_scalars(run)["train/loss"]) == 4  # one curve: both legs' steps
    assert len(list(run.glob("events.out.tfevents.*"))) == 2


def test_weights_only_damaged_and_non_finite_checkpoints_are_usage_errors(
    tmp_path, monkeypatch, capsys
):
    """Each names the file and stops before anything is written (before: Lightning failed
    after writing the run's config and logs, or a damaged pickle raised a traceback)."""
    monkeypatch.chdir(tmp_path)
    _fit(2)
    (run,) = _runs()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    raw = (run / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    weights_only = {k: v for k, v in checkpoint.items() if k != "optimizer_states"}
    torch.save(weights_only, bad / "weights_only.ckpt")
    nan = {**checkpoint, "state_dict": dict(checkpoint["state_dict"])}
    name = next(iter(nan["state_dict"]))
    nan["state_dict"][name] = torch.full_like(nan["state_dict"][name], float("nan"))
    torch.save(nan, bad / "nan.ckpt")
    for label, offset in (("pickle", 200), ("tensor", len(raw) // 2)):  # flipped bytes
        damaged = bytearray(raw)
        damaged[offset : offset + 64] = bytes(b ^ 0xFF for b in damaged[offset : offset + 64])
        (bad / f"damaged_{label}.ckpt").write_bytes(damaged)
    expected = {
        "weights_only": "holds weights only",
        "nan": f"holds non-finite weights \\({name}\\)",
        "damaged_pickle": "(is damaged|cannot be read)",
        "damaged_tensor": "is damaged: its part archive/data/\\d+ fails its checksum",
    }
    before = _digest(tmp_path)
    for label, message in expected.items():
        error = _usage_error(capsys, 4, f"--ckpt_path={bad / label}.ckpt")
        assert re.search(rf"--ckpt_path={bad / label}\.ckpt {message}", error), error
        assert _digest(tmp_path) == before and _runs() == [run]


def test_resume_from_another_working_directory_continues_the_run(tmp_path, monkeypatch):
    """A run saved under a relative ``logs`` and resumed twice from another folder, by an
    absolute and then a relative path: one run, nothing written in the other folder."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    _fit(2)
    (run,) = _runs()
    last = (run / "checkpoints" / "last.ckpt").resolve()
    monkeypatch.chdir(tmp_path / "b")
    _fit(4, f"--ckpt_path={last}")
    _fit(6, f"--ckpt_path={os.path.relpath(last)}")
    assert not list((tmp_path / "b").rglob("*"))
    monkeypatch.chdir(tmp_path / "a")
    assert _runs() == [run] and _steps(last) == 6
    assert sorted(p.name for p in run.glob("config*.yaml")) == [
        "config-leg2.yaml",
        "config-leg3.yaml",
        "config.yaml",
    ]
    assert len(read_scalars(run)["train/loss"]) == 6


def _fail_writes(monkeypatch, after: int = 0) -> None:
    """Every TensorBoard record write after the first ``after`` fails: a full disk."""
    write = record_writer.RecordWriter.write
    count = iter(range(10**9))

    def full(self, data) -> None:
        if next(count) >= after:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)


def _failed_run(capsys, *args) -> str:
    """stderr of a fit that must end with exit 1, without a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        _fit(*args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err[-3000:]
    assert "Traceback" not in err and "Exception in thread" not in err, err[-3000:]
    return err


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("writer", ["checkpoint", "tensorboard"])
def test_full_disk_before_any_checkpoint_says_none_exists(tmp_path, monkeypatch, capsys, writer):
    monkeypatch.chdir(tmp_path)
    if writer == "checkpoint":
        monkeypatch.setattr(torch, "save", _no_space)
    else:
        _fail_writes(monkeypatch)
    err = _failed_run(capsys, 4, "--checkpoint.every_n_train_steps=2")
    assert "No space left on device" in err and "No checkpoint of this run was written" in err
    assert "--ckpt_path" not in err and err.count("error:") == 1
    assert not list(tmp_path.rglob("*.ckpt"))


def _no_space(*args, **kwargs) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_failing_tensorboard_writer_names_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _fit(2)
    (run,) = _runs()
    last = run / "checkpoints" / "last.ckpt"
    _fail_writes(monkeypatch)
    err = _failed_run(capsys, 8, f"--ckpt_path={last}")
    assert f"Could not write the run's logs in {run.resolve()} (No space left on device)" in err
    assert f"The last good checkpoint is {last} (step 2)" in err
    assert f"resume with --ckpt_path {last}" in err and err.count("error:") == 1
    assert _steps(last) == 2


def test_moved_run_resumed_with_another_checkpoint_interval_keeps_one_last_ckpt(
    tmp_path, monkeypatch
):
    """Before: Lightning's state key of the checkpoint callback holds its interval, so the
    resumed fit lost the run's last.ckpt and wrote last-v1.ckpt beside it (a later resume
    from last.ckpt silently rewound)."""
    monkeypatch.chdir(tmp_path)
    _fit(2)
    Path("logs").rename("moved")
    (run,) = Path("moved").glob("*/version_*")
    last = run / "checkpoints" / "last.ckpt"
    _fit(6, f"--ckpt_path={last}", "--checkpoint.every_n_train_steps=2")
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"] and _steps(last) == 6
    assert not Path("logs").exists()


def test_two_processes_writing_one_checkpoint_never_share_a_temporary_file(tmp_path):
    """Outside the CLI's claim (a plain Trainer), two processes saving one file: each write
    replaces it whole (before: both wrote ``last.ckpt.tmp``, and one's rename failed)."""
    path = tmp_path / "last.ckpt"
    children = []
    for value in (1.0, 2.0):
        pid = os.fork()
        if pid == 0:  # the child: 30 saves, exit 0 only if every one succeeded
            code = 0
            try:
                for _ in range(30):
                    AtomicCheckpointIO().save_checkpoint({"w": torch.full((1000,), value)}, path)
            except BaseException:  # noqa: BLE001 (the parent sees the exit code)
                code = 1
            os._exit(code)
        children.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children] == [0, 0]
    weights = torch.load(path, weights_only=True)["w"]
    assert weights.unique().tolist() in ([1.0], [2.0])  # one writer's, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_run_directory_that_cannot_be_claimed(tmp_path, monkeypatch, capsys):
    """Without file locks (Lustre without flock, some NFS) a fit warns and trains unclaimed;
    a run directory it cannot write is a usage error naming it (before: a traceback)."""
    monkeypatch.chdir(tmp_path)

    def no_locks(fd, operation) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    with monkeypatch.context() as patch:
        patch.setattr(fcntl, "flock", no_locks)
        with pytest.warns(UserWarning, match="this filesystem has no file locks"):
            _fit(2)
    (run,) = _runs()
    assert _steps(run / "checkpoints" / "last.ckpt") == 2

    def read_only(self) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(RunLock, "acquire", read_only)
    before = _digest(tmp_path)
    error = _usage_error(capsys, 4, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert re.search(rf"the run directory \S*{run} cannot be written \(Permission denied\)", error)
    assert _digest(tmp_path) == before
