"""Seeded generators: every random draw in the project is a pure function of integer keys."""

import torch


def seeded_generator(device: torch.device | str, *keys: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded by ``hash(keys)`` (stable across processes).

    Python hashes tuples of ints deterministically (``PYTHONHASHSEED`` only affects str/bytes),
    so ``(seed, step, rank)`` gives the same stream on every run and a different one per key.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(hash(tuple(int(k) for k in keys)) & (2**63 - 1))
    return generator


def drawn_by(generator: torch.Generator, dtype: torch.dtype) -> dict:
    """The keywords of a draw (``torch.rand``, ``torch.randn``, ...) made from ``generator``
    alone, on its device: ``generator``, ``device=generator.device`` and ``dtype``."""
    return {"generator": generator, "device": generator.device, "dtype": dtype}
