"""The batched lasso (``icl_lightning.theory.baselines.lasso``) measured three ways, on sparse
prompts (``SparseLinear``, normal inputs), the standard curve (the query after k points is
point k + 1), one thread:

- ``--sklearn``: against scikit-learn's ``Lasso(tol=1e-12, max_iter=10**6)`` fitted on every
  prefix of 32 float64 prompts (d = 8, 2 non-zero weights, 16 points): the largest difference
  of the predictions per alpha;
- ``--garg-python PY --garg-ref SRC``: against Garg et al.'s own ``LassoModel`` (their
  ``src/models.py``; scikit-learn's ``Lasso`` at its default ``tol=1e-4``, ``max_iter=100000``,
  a convergence warning raises), run one prompt at a time by ``PY`` (their environment,
  docs/bench.md) on 64 float32 prompts (d = 20, 3 non-zero weights, 41 points): per alpha the
  prompts whose fits converged, the largest difference below and from d points, and both
  against scikit-learn at ``tol=1e-12`` on the first 8 prompts;
- ``--timing``: 1,024 float32 prompts (d = 20, 3 non-zero weights, N = 40): CPU seconds of
  ours and of the coordinate descent it replaced (``--old-commit``'s ``baselines.lasso``,
  read with ``git show``), side by side in this process, and how far the old curve (loss / d
  at each k) and predictions were.

    python scripts/check_lasso.py --sklearn --timing \\
        --garg-python .venv-garg/bin/python --garg-ref GARGREF/src
"""

import argparse
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import torch

from icl_lightning.data import SparseLinear
from icl_lightning.data.garg_shifts import CurvePrompts
from icl_lightning.theory import baselines as bl

GARG_ALPHAS = [1.0, 0.1, 0.01, 0.001, 0.0001]

#: run by --garg-python: argv = src, prompts .pt, output .pt
GARG_SIDE = """
import sys, warnings, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
import models
data, out = torch.load(sys.argv[2]), {}
xs, ys = data["xs"], data["ys"]
for alpha in data["alphas"]:
    model, pred = models.LassoModel(alpha), torch.zeros_like(ys)
    converged = torch.ones(len(xs), dtype=torch.bool)
    for j in range(len(xs)):
        try:
            pred[j] = model(xs[j : j + 1], ys[j : j + 1])[0]
        except Warning:
            converged[j] = False
    tight = torch.zeros(8, ys.shape[1], dtype=torch.float64)  # scikit-learn to tol 1e-12
    for j in range(8):
        for k in range(1, ys.shape[1]):
            fit = models.Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=10**6)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit.fit(xs[j, :k].double().numpy(), ys[j, :k].double().numpy())
            tight[j, k] = float(fit.coef_ @ xs[j, k].double().numpy())
    out[alpha] = (pred, converged, tight)
torch.save(out, sys.argv[3])
"""


def prompts(num, d, nonzero, points, seed, dtype) -> CurvePrompts:
    task = SparseLinear(d, nonzero)
    batch = task.sample(num, points - 1, torch.Generator().manual_seed(seed), dtype)
    return CurvePrompts.from_batch(batch)


def against_sklearn() -> None:
    from sklearn.linear_model import Lasso

    p = prompts(32, 8, 2, 16, 0, torch.float64)
    for alpha in [0.1, 0.01, 0.001]:
        pred, worst = bl.lasso(p.xs, p.ys, p.qs, alpha), 0.0
        for b in range(len(p.xs)):
            for k in range(1, p.xs.shape[1]):
                fit = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=10**6)
                fit.fit(p.xs[b, :k].numpy(), p.ys[b, :k].numpy())
                worst = max(worst, abs(float(pred[b, k]) - float(fit.coef_ @ p.qs[b, k].numpy())))
        print(f"scikit-learn, alpha {alpha}: max |ours - theirs| {worst:.2g}")


def against_garg(python: str, src: str) -> None:
    if not (Path(src) / "models.py").is_file():
        raise SystemExit(f"--garg-ref {src}: no models.py there (give Garg et al.'s src/ folder)")
    p = prompts(64, 20, 3, 41, 1, torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp, "prompts.pt"), Path(tmp, "out.pt")
        torch.save({"xs": p.xs, "ys": p.ys, "alphas": GARG_ALPHAS}, data)
        subprocess.run([python, "-c", GARG_SIDE, src, str(data), str(out)], check=True)
        theirs = torch.load(out)
    d = p.xs.shape[-1]
    for alpha, (pred, converged, tight) in theirs.items():
        ours = bl.lasso(p.xs, p.ys, p.qs, alpha)
        diff = (ours - pred)[converged].abs()
        share = float((diff <= 1e-5).float().mean())
        to_tight = [float((tight - q[:8].double()).abs().max()) for q in (pred, ours)]
        print(
            f"Garg et al., alpha {alpha}: {int(converged.sum())}/{len(converged)} prompts "
            f"converged; max |ours - theirs| k < d {float(diff[:, 1:d].max()):.2g}, "
            f"k >= d {float(diff[:, d:].max()):.2g}; <= 1e-5: {share:.0%}; from scikit-learn "
            f"at tol 1e-12 (8 prompts): theirs {to_tight[0]:.2g}, ours {to_tight[1]:.2g}"
        )


def timing(old_commit: str) -> None:
    source = subprocess.run(
        ["git", "show", f"{old_commit}:icl_lightning/theory/baselines.py"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    ).stdout
    old = types.ModuleType("old_baselines")
    exec(source, old.__dict__)
    p = prompts(1024, 20, 3, 41, 0, torch.float32)

    def curve(pred):
        return (pred.double() - p.ys.double()).square().mean(0) / p.xs.shape[-1]

    for alpha in [0.1, 0.01, 0.001]:
        seconds, preds = {}, {}
        for name, lasso in [("ours", bl.lasso), ("old", old.lasso)]:
            start = time.process_time()
            preds[name] = lasso(p.xs, p.ys, p.qs, alpha)
            seconds[name] = time.process_time() - start
        gap = float((curve(preds["old"]) - curve(preds["ours"])).abs().max())
        print(
            f"timing, alpha {alpha}: ours {seconds['ours']:.2f} s CPU, old {seconds['old']:.1f} s "
            f"CPU ({seconds['old'] / seconds['ours']:.0f}x); old curve off by {gap:.2g}, old "
            f"predictions by {float((preds['old'] - preds['ours']).abs().max()):.2g}"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sklearn", action="store_true", help="compare with scikit-learn")
    parser.add_argument("--garg-python", help="Python of Garg et al.'s environment")
    parser.add_argument("--garg-ref", help="Garg et al.'s src/ folder")
    parser.add_argument("--timing", action="store_true", help="time ours against the old one")
    parser.add_argument("--old-commit", default="9cc5af6", help="commit of the old lasso")
    args = parser.parse_args(argv)
    if bool(args.garg_python) != bool(args.garg_ref):
        parser.error("--garg-python and --garg-ref go together")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # scikit-learn's convergence warnings below d points
    if args.sklearn:
        against_sklearn()
    if args.garg_python:
        against_garg(args.garg_python, args.garg_ref)
    if args.timing:
        timing(args.old_commit)


if __name__ == "__main__":
    main(sys.argv[1:])
