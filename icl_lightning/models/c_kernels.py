"""Building and loading the framework's C kernels (CPU fast paths) with the system's compiler.

A kernel library is C source compiled once per set of flags (dtype, sizes) with ``$CC``
(default ``cc``) into :func:`kernel_dir`, named by a hash of compiler, flags and source, and
loaded with :mod:`ctypes`. A model whose kernels cannot be built (no compiler, a compile error,
a missing symbol) warns once and takes its PyTorch path, which computes the same function.

- :mod:`~icl_lightning.models.batch_last`: the deep linear-attention stack (paper A);
- :mod:`~icl_lightning.models.gpt2_cpu`: causal attention and GPT-2's GELU.

Inside :func:`disabled` every model takes its PyTorch path (e.g. to count FLOPs with
``torch.utils.flop_counter``, which cannot see into the kernels).
"""

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

_enabled = [True]


@contextlib.contextmanager
def disabled():
    """Inside, no model runs a C kernel: each takes its PyTorch formulation."""
    _enabled.append(False)
    try:
        yield
    finally:
        _enabled.pop()


def enabled() -> bool:
    """False inside :func:`disabled`."""
    return _enabled[-1]


def eager_cpu(*tensors: torch.Tensor) -> bool:
    """Whether a fast path may run on ``tensors``: all on the CPU, outside :func:`disabled`,
    autocast and ``torch.func`` transforms."""
    if not enabled() or any(t.device.type != "cpu" for t in tensors):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return not torch._C._are_functorch_transforms_active()


def kernel_dir() -> Path:
    """Where compiled kernels are kept (``$ICL_LIGHTNING_KERNELS``, default a folder of the
    system's temporary directory, as torch.compile keeps its own)."""
    default = Path(tempfile.gettempdir()) / f"icl_lightning_kernels_{os.getuid()}"
    return Path(os.environ.get("ICL_LIGHTNING_KERNELS", default))


def build(stem: str, source: str, flags: list[str], libraries: tuple[str, ...] = ()) -> Path:
    """The shared library of ``source`` compiled with ``flags`` (and linked with
    ``libraries``, e.g. ``("-lm",)``), compiled unless already there: ``<stem>_<hash>.so``,
    written to a temporary name and renamed, so that processes compiling at once never load a
    partial file."""
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256("\n".join([compiler, *flags, *libraries, source]).encode())
    folder = kernel_dir()
    library = folder / f"{stem}_{key.hexdigest()[:16]}.so"
    if library.is_file():
        return library
    if shutil.which(compiler) is None:
        raise OSError(f"no C compiler {compiler!r} (set CC)")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        code = Path(tmp) / f"{stem}.c"
        code.write_text(source)
        built = Path(tmp) / library.name
        subprocess.run(
            [compiler, *flags, str(code), "-o", str(built), *libraries],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(built, library)
    return library


def load(
    what: str, stem: str, source: str, flags: list[str], signatures: dict, libraries=()
) -> ctypes.CDLL | None:
    """:func:`build`, then load the library and give each function of ``signatures``
    (``{name: argtypes}``) its argument types (they return nothing); ``None``, with a warning
    naming ``what`` (the model whose fast path this is), when it cannot be compiled or
    loaded."""
    try:
        lib = ctypes.CDLL(str(build(stem, source, flags, tuple(libraries))))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or error
        warnings.warn(
            f"{what}: the CPU kernels could not be built ({detail}); it runs on its slower "
            "PyTorch path",
            stacklevel=3,
        )
        return None
    for name, argtypes in signatures.items():
        getattr(lib, name).restype = None
        getattr(lib, name).argtypes = argtypes
    return lib
