"""Reproduce both papers with the shipped configs, several seeds, into one report.

    python scripts/reproduce.py --quick                 # every experiment, reduced size
    python scripts/reproduce.py             # the papers' own scale (prints its estimate first)
    python scripts/reproduce.py --only lsa_one_layer contextual_block --seeds 5
    python scripts/reproduce.py --only lsa_deep --seeds 1 --max-steps 5000   # part of the way

``--max-steps K`` stops every run of the full scale at K steps (at most the paper's count): the
report then says "K of the paper's S steps" for each experiment, and a later call with a larger
K resumes those runs from their ``last.ckpt`` instead of starting again.

Every run is ``icl-lightning fit --config <derived config>``: the shipped config with the
experiment's changes (steps, seed, sizes) written to ``<run dir>/reproduce.yaml``, in a fresh
process. Runs live in ``logs/reproduce/<quick|full>/<experiment>/<variant>/seed<k>/``; a run with
a ``done.json`` there is not run again, and an interrupted one resumes from its ``last.ckpt``.
The report goes to ``reports/<quick|full>/``: ``report.md``, ``results.json`` and one PNG per
figure, every number a mean +- std over the seeds, next to the paper's.
"""

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from icl_lightning.report import (
    Check,
    Scalars,
    aggregate,
    band_figure,
    final_curve,
    final_values,
    format_value,
    markdown_table,
    read_scalars,
)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Experiment:
    """One paper experiment: a shipped config, its variants, checks and figures.

    ``changes`` (and each variant's) map dotted config paths to values; ``callbacks.<Class>.<arg>``
    sets a probe's argument. ``quick`` holds the extra changes of ``--quick``. ``full_steps`` is
    the paper's step count where it states one (paper A: 5,000 for one layer, 50,000 deep,
    10,000 for the token construction), else this project's full scale. ``seconds`` is the
    measured cost per 1,000 steps on a 2-core CPU and ``quick_seconds`` the measured wall time of
    one ``--quick`` run, start-up included (for the time estimates). ``quick_variants`` names the
    variants that ``--quick`` runs (default: all); ``notes`` says under a variant's heading in
    the report what sets it apart; ``variant_seconds`` replaces ``seconds`` for the variants
    that cost more.
    """

    name: str
    title: str
    config: str
    full_steps: int
    quick_steps: int
    seconds: float
    quick_seconds: float
    variants: dict[str, dict] = field(default_factory=lambda: {"default": {}})
    changes: dict = field(default_factory=dict)
    quick: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)
    quick_variants: tuple[str, ...] | None = None
    notes: dict[str, str] = field(default_factory=dict)
    variant_seconds: dict[str, float] = field(default_factory=dict)

    def variant_names(self, quick: bool) -> list[str]:
        """The variants run at this scale: all of them, or ``quick_variants`` with ``--quick``."""
        if quick and self.quick_variants is not None:
            return list(self.quick_variants)
        return list(self.variants)


def _deep(L: int, recurrent: bool = False) -> dict:
    """Paper A's settings for L layers: lr 5e-4 when L > 3, clipping 10 when L > 2, init 0.002/L."""
    return {
        "model.model.init_args.num_layers": L,
        "model.model.init_args.recurrent": recurrent,
        "model.model.init_args.init_scale": 0.002 / L,
        "optimizer.init_args.lr": 5e-4 if L > 3 else 1e-3,
        "trainer.gradient_clip_val": 10.0 if L > 2 else 1e-3,
    }


PAPER_A = "von Oswald et al. 2023"
PAPER_B = "Dherin et al. 2025"
LOSS_TAGS = {"trained LSA": "gd/loss_model", "GD": "gd/loss_gd", "interpolation": "gd/loss_interp"}
DEEP_CHECKS = [
    Check(
        "trained / L-step GD loss",
        "gd/loss_model",
        f"{PAPER_A}: below 1 (the trained model beats L steps of GD)",
        lambda v: v < 1,
        "< 1",
        over="gd/loss_gd",
    ),
    Check(
        "trained / GD++ loss",
        "gd/loss_model",
        f"{PAPER_A}: close to 1 (the model is close to GD++)",
        lambda v: 0.8 <= v <= 1.25,
        "within 0.8-1.25",
        over="gd/loss_gd_pp",
    ),
    Check(
        "model cos (GD++)", "gd/model_cos_pp", f"{PAPER_A}: near 1", lambda v: v >= 0.99, ">= 0.99"
    ),
]

EXPERIMENTS = [
    Experiment(
        "lsa_one_layer",
        "Paper A, Figure 2: one LSA layer learns one step of GD (d = 10, N = 10)",
        "configs/lsa_linear.yaml",
        full_steps=5000,
        quick_steps=1000,
        seconds=20,
        quick_seconds=14,
        changes={"callbacks.GDAlignment.every_n_steps": 250},
        quick={
            "data.init_args.batch_size": 1024,  # at 2048 one seed in three was still on the
            "callbacks.GDAlignment.every_n_steps": 100,  # initial plateau at step 1000
            "callbacks.OODProbe.every_n_steps": 500,
        },
        checks=[
            Check("model cos", "gd/model_cos", f"{PAPER_A}: ~1", lambda v: v >= 0.999, ">= 0.999"),
            Check(
                "loss ratio trained / GD",
                "gd/loss_ratio",
                f"{PAPER_A}: ~1 (official code 1.000-1.003)",
                lambda v: v <= 1.003,
                "<= 1.003",
            ),
            Check("preds diff", "gd/preds_diff", f"{PAPER_A}: -> 0", lambda v: v < 0.05, "< 0.05"),
            Check("model diff", "gd/model_diff", f"{PAPER_A}: -> 0", lambda v: v < 0.1, "< 0.1"),
        ],
        figures=[
            {"file": "fig2_loss", "tags": LOSS_TAGS, "ylabel": "loss", "logy": True},
            {
                "file": "fig2_alignment",
                "tags": {
                    "model cos": "gd/model_cos",
                    "model diff": "gd/model_diff",
                    "preds diff": "gd/preds_diff",
                },
                "ylabel": "alignment",
            },
            {
                "file": "ood_inputs",
                "alpha": "ood",
                "shift": "inputs",
                "ylabel": "loss",
                "logy": True,
            },
            {
                "file": "ood_weights",
                "alpha": "ood",
                "shift": "weights",
                "ylabel": "loss",
                "logy": True,
            },
        ],
    ),
    Experiment(
        "lsa_deep",
        "Paper A, deep LSA: L layers against L-step GD and GD++ (d = 10, N = 10)",
        "configs/lsa_deep.yaml",
        full_steps=50000,
        quick_steps=200,
        seconds=150,
        quick_seconds=30,
        variants={
            **{f"L{L}": _deep(L) for L in (2, 3, 4, 5)},
            "L4_recurrent": _deep(4, recurrent=True),
        },
        changes={"callbacks.GDAlignment.every_n_steps": 1000},
        notes={
            "L4_recurrent": "One layer's weights applied 4 times. Its GD++ here has one step "
            "size pair per step, more than a recurrent model can express; the README measures "
            "it against GD++ with one shared pair (`gd_plus_plus: shared`) too.",
        },
        quick={
            "data.init_args.batch_size": 512,
            "callbacks.GDAlignment.every_n_steps": 200,
            "callbacks.GDAlignment.num_tasks": 2048,
            "callbacks.OODProbe.every_n_steps": 200,
            "callbacks.OODProbe.num_tasks": 1024,
        },
        checks=DEEP_CHECKS,
        figures=[
            {
                "file": "deep_loss",
                "tags": {
                    "trained": "gd/loss_model",
                    "L-step GD": "gd/loss_gd",
                    "GD++": "gd/loss_gd_pp",
                },
                "ylabel": "loss",
                "logy": True,
            }
        ],
    ),
    Experiment(
        "sine",
        "Paper A, beyond linear: MLP transformer on sine tasks against GD on its learned features",
        "configs/mlp_sine.yaml",
        full_steps=3000,
        quick_steps=600,
        seconds=25,
        quick_seconds=16,
        checks=[
            Check(
                "trained / GD-on-learned-features loss",
                "deep/model_loss",
                f"{PAPER_A}: close to 1 (the model does GD on its learned features)",
                lambda v: 0.8 <= v <= 1.25,
                "within 0.8-1.25",
                over="deep/feature_gd_loss",
            ),
            Check(
                "GD on learned features / GD on x loss",
                "deep/feature_gd_loss",
                f"{PAPER_A}: below 1 (features beat the raw inputs)",
                lambda v: v < 1,
                "< 1",
                over="deep/linear_gd_loss",
            ),
        ],
        figures=[
            {
                "file": "sine_loss",
                "tags": {
                    "model": "deep/model_loss",
                    "GD on features": "deep/feature_gd_loss",
                    "GD on x": "deep/linear_gd_loss",
                },
                "ylabel": "loss",
                "logy": True,
            }
        ],
    ),
    Experiment(
        "token_construction",
        "Paper A, normal tokens: layer 1 copies y_i next to x_i",
        "configs/token_construction.yaml",
        full_steps=10000,
        quick_steps=600,
        seconds=25,
        quick_seconds=16,
        variants={  # what sets each apart: ``notes`` below
            "paper": {  # the official normal_token_construct notebook's config
                "data.init_args.task.init_args.input_dim": 10,
                "data.init_args.num_context": 10,
                "data.init_args.batch_size": 2048,
                "model.model.init_args.init_scale": 0.01,  # 0.02 / num_layers
                "model.model.init_args.pe_size": 10,
                "model.model.init_args.key_size": 20,
                "optimizer.init_args.lr": 1e-3,
                "trainer.gradient_clip_val": 10.0,
            },
            "shortened": {},
        },
        quick_variants=("shortened",),
        variant_seconds={"paper": 180},  # 10,000 steps of batch 2048 took 30 min a seed
        notes={
            "paper": "Paper A's settings (its normal-token notebook): d = 10, N = 10, batch "
            "2048, init scale 0.02 / L, lr 1e-3, clipping 10, positional encoding 10, key size 20.",
            "shortened": "The shipped config: d = 2, N = 5, batch 128, init scale 1, lr 3e-3, "
            "where the copy emerges within a CPU budget.",
        },
        checks=[
            Check(
                "attention mass on own y",
                "copy/attention_mass",
                f"{PAPER_A}: the first layer copies (mass -> 1)",
                lambda v: v >= 0.5,
                ">= 0.5",
            ),
            Check(
                "copy R^2", "copy/r2", f"{PAPER_A}: y_i recoverable", lambda v: v >= 0.9, ">= 0.9"
            ),
            Check(
                "trained / 1-step GD loss",
                "copy/model_loss",
                f"{PAPER_A}: ~1 (after the copy, layer 2 does one GD step)",
                lambda v: v <= 1.05,
                "<= 1.05",
                over="copy/gd_loss",
            ),
        ],
        figures=[
            {
                "file": "copy",
                "tags": {"attention mass": "copy/attention_mass", "copy R^2": "copy/r2"},
                "ylabel": "score",
            }
        ],
    ),
    Experiment(
        "contextual_block",
        "Paper B, Figures 1-3: one contextual block, d = 2, N = 100 and 400 (--quick: 40), "
        "8 heads of 4",
        "configs/contextual_block.yaml",
        full_steps=5000,
        quick_steps=600,
        seconds=45,
        quick_seconds=15,
        variants={"N100": {}, "N400": {"data.init_args.num_context": 400}},
        quick_variants=("N100",),
        notes={"N100": "N = 100 (--quick: 40).", "N400": "N = 400, the same block otherwise."},
        changes={
            "data.init_args.num_context": 100,
            "data.init_args.task.init_args.input_dim": 2,
            "data.init_args.batch_size": 64,
            "model.model.init_args.num_heads": 8,
            "model.model.init_args.key_size": 4,
            "model.model.init_args.mlp_width": 128,
            "callbacks.DeltaWConvergence.per_token": True,
            "callbacks.DeltaWEquivalence.every_n_steps": 250,
        },
        quick={
            "data.init_args.num_context": 40,
            "callbacks.DeltaWEquivalence.every_n_steps": 100,
            "callbacks.DeltaWConvergence.every_n_steps": 300,
            "callbacks.FinetuneComparison.every_n_steps": 300,
        },
        checks=[
            Check(
                "max |T_W(C,x) - T_{W+dW}(x)| (float32)",
                "dw/max_abs_diff",
                f"{PAPER_B}, Theorem 2.2: equal (exact)",
                lambda v: v <= 1e-5,
                "<= 1e-5",
            ),
            Check(
                "||dW_N - dW_{N-1}|| / ||dW_2 - dW_1||",
                "dw/update_ratio",
                f"{PAPER_B}, Fig. 2: updates shrink to 0",
                lambda v: v <= 0.1,
                "<= 0.1 (10x fall)",
            ),
        ],
        figures=[
            {
                "file": "fig1_equivalence",
                "tags": {"T_W(C, x)": "dw/loss_context", "T_{W+dW}(x)": "dw/loss_delta_w"},
                "ylabel": "loss",
                "logy": True,
            },
            {
                "file": "fig2_convergence",
                "per_i": {"||dW_{i+1} - dW_i||": "dw/update_i"},
                "ylabel": "norm",
                "logy": True,
            },
            {
                "file": "fig3_finetune",
                "per_i": {"SGD finetuning": "ft/sgd_loss_i", "Delta W_i": "ft/dw_loss_i"},
                "ylabel": "test loss",
            },
        ],
    ),
]


EXPERIMENTS.append(
    Experiment(
        "curriculum",
        "Beyond the papers: Garg et al.'s curriculum on one LSA layer (d = 20, N = 40)",
        "configs/lsa_curriculum.yaml",
        full_steps=3000,
        quick_steps=750,
        seconds=60,
        quick_seconds=14,
        variants={"with": {}, "without": {"data.init_args.curriculum": None}},
        quick={"data.init_args.batch_size": 512, "callbacks.GDAlignment.every_n_steps": 250},
        checks=[
            Check(
                "trained / 1-step GD loss",
                "gd/loss_model",
                "Garg et al. 2022: with or without, the model reaches the same loss",
                lambda v: v <= 1.01,
                "<= 1.01",
                over="gd/loss_gd",
            ),
        ],
        figures=[
            {
                "file": "loss_with_and_without",
                "across": "val/loss",
                "marks": "curriculum/dims",
                "ylabel": "val/loss",
                "logy": True,
            }
        ],
    )
)


#: N' of the context-length experiment: 0.5, 1, 2 and 4 times lsa_linear.yaml's N = 10
CONTEXT_TRAIN = 10
CONTEXT_LENGTHS = (5, 10, 20, 40)


def _gd_at_lengths(every_n_steps: int, num_tasks: int) -> list[dict]:
    """One GDAlignment per N' of :data:`CONTEXT_LENGTHS`, tags ``gd/N<N'>/...``, each with GD
    tuned for its N'."""
    return [
        {
            "class_path": "icl_lightning.callbacks.GDAlignment",
            "init_args": {
                "every_n_steps": every_n_steps,
                "num_tasks": num_tasks,
                "num_context": n,
                "tag": f"N{n}",
            },
        }
        for n in CONTEXT_LENGTHS
    ]


EXPERIMENTS.append(
    Experiment(
        "context_length",
        f"Beyond the papers: one LSA layer trained at N = {CONTEXT_TRAIN}, measured at "
        f"N' = {', '.join(map(str, CONTEXT_LENGTHS))} against GD tuned for each N'",
        "configs/lsa_linear.yaml",
        full_steps=5000,
        quick_steps=600,
        seconds=28,
        quick_seconds=13,
        changes={"trainer.callbacks": _gd_at_lengths(1000, 10000)},
        quick={"trainer.callbacks": _gd_at_lengths(0, 2048), "data.init_args.batch_size": 1024},
        checks=[
            Check(
                f"loss trained / GD at N' = N = {CONTEXT_TRAIN}",
                f"gd/N{CONTEXT_TRAIN}/loss_ratio",
                f"{PAPER_A}: ~1 at the training length",
                lambda v: v <= 1.01,
                "<= 1.01",
            ),
            Check(
                f"model cos at N' = {CONTEXT_LENGTHS[-1]}",
                f"gd/N{CONTEXT_LENGTHS[-1]}/model_cos",
                "(beyond the papers) GD's direction kept beyond N",
                lambda v: v >= 0.99,
                ">= 0.99",
            ),
        ],
        figures=[
            {
                "file": "loss_vs_context",
                "lengths": CONTEXT_LENGTHS,
                "tag": "gd/N{}/",
                "marks": [CONTEXT_TRAIN],
                "ylabel": "loss",
                "logy": True,
            }
        ],
    )
)


def set_path(config: dict, path: str, value) -> None:
    """Set ``config[a][b][c] = value`` for ``path = "a.b.c"``; ``callbacks.<Class>.<arg>`` sets
    the init arg of the trainer callback whose class_path ends in ``Class``."""
    keys = path.split(".")
    if keys[0] == "callbacks":
        callbacks = config["trainer"]["callbacks"]
        match = [c for c in callbacks if c["class_path"].endswith("." + keys[1])]
        if not match:
            raise KeyError(f"{path}: no callback {keys[1]} in the config")
        match[0].setdefault("init_args", {})[keys[2]] = value
        return
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def planned_steps(experiment: Experiment, quick: bool, max_steps: int | None = None) -> int:
    """Steps of each run: the quick or the full count, capped at ``max_steps`` when given."""
    steps = experiment.quick_steps if quick else experiment.full_steps
    return steps if max_steps is None else min(steps, max_steps)


def derived_config(
    experiment: Experiment, variant: str, seed: int, quick: bool, max_steps: int | None = None
) -> dict:
    """The shipped config with the experiment's, the variant's and the seed's changes."""
    config = yaml.safe_load((ROOT / experiment.config).read_text())
    changes = {
        **experiment.changes,
        **experiment.variants[variant],
        **(experiment.quick if quick else {}),
        "trainer.max_steps": planned_steps(experiment, quick, max_steps),
        "seed_everything": seed,
        "data.init_args.seed": seed,
        "trainer.enable_progress_bar": False,  # one line per run here instead
    }
    for path, value in changes.items():
        set_path(config, path, value)
    return config


def run_dir(root: Path, experiment: Experiment, variant: str, seed: int) -> Path:
    return root / experiment.name / variant / f"seed{seed}"


def train(
    experiment: Experiment,
    variant: str,
    seed: int,
    quick: bool,
    root: Path,
    max_steps: int | None = None,
) -> str:
    """Run one training (or skip it when done to at least its planned steps; a run done to
    fewer steps resumes from its ``last.ckpt``); return a status line."""
    directory = run_dir(root, experiment, variant, seed)
    steps = planned_steps(experiment, quick, max_steps)
    done = directory / "done.json"
    if done.exists() and json.loads(done.read_text()).get("steps", steps) >= steps:
        return "done earlier, skipped"
    directory.mkdir(parents=True, exist_ok=True)
    config = derived_config(experiment, variant, seed, quick, max_steps)
    logger = config["trainer"]["logger"]["init_args"]
    logger.update(save_dir=str(directory.parents[1]), name=variant, version=f"seed{seed}")
    config_path = directory / "reproduce.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "icl_lightning", "fit", f"--config={config_path}"]
    checkpoint = directory / "checkpoints" / "last.ckpt"
    if checkpoint.exists():
        command.append(f"--ckpt_path={checkpoint}")
    start = time.perf_counter()
    with open(directory / "fit.log", "a") as log:
        proc = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (rc {proc.returncode}); see {log.name}")
    done.write_text(json.dumps({"seconds": seconds, "steps": steps, "command": command}))
    return f"trained in {seconds:.0f} s"


def estimate_seconds(
    experiments: list[Experiment], seeds: int, quick: bool, max_steps: int | None = None
) -> float:
    """Time estimate on a 2-core CPU from each experiment's measured seconds per 1,000 steps."""
    total = 0.0
    for e in experiments:
        steps = planned_steps(e, quick, max_steps)
        for variant in e.variant_names(quick):
            per_1000 = e.variant_seconds.get(variant, e.seconds)
            total += seeds * (e.quick_seconds if quick else 10 + per_1000 * steps / 1000)
    return total


def figure_curves(spec: dict, runs: list[Scalars]) -> tuple[dict, str]:
    """The curves of one figure spec: over steps (``tags``), over context index i
    (``per_i``: tags ``<prefix><i>`` at the last step), over context length N' (``lengths``:
    ``<tag with N'>loss_model`` and ``loss_gd`` at the last step) or over alpha (``alpha``)."""
    if "tags" in spec:
        curves = {label: aggregate(runs, tag) for label, tag in spec["tags"].items()}
        return {k: v for k, v in curves.items() if v is not None}, "step"
    if "per_i" in spec:
        curves = {label: final_values(runs, prefix, int) for label, prefix in spec["per_i"].items()}
        return {k: v for k, v in curves.items() if v is not None}, "context index i"
    if "lengths" in spec:
        curves = {
            who: final_curve(runs, {n: spec["tag"].format(n) + name for n in spec["lengths"]})
            for who, name in (("trained", "loss_model"), ("GD", "loss_gd"))
        }
        xlabel = f"context length N' (dashed: N = {spec['marks'][0]} of training)"
        return {k: v for k, v in curves.items() if v is not None}, xlabel
    prefix = f"{spec['alpha']}/loss_{{}}_{spec['shift']}_a"
    curves = {who: final_values(runs, prefix.format(who)) for who in ("model", "gd")}
    return {k: v for k, v in curves.items() if v is not None}, "alpha"


LENGTH_COLUMNS = {
    "model loss": "loss_model",
    "GD loss": "loss_gd",
    "model / GD": "loss_ratio",
    "model cos": "model_cos",
}


def lengths_table(spec: dict, runs: list[Scalars]) -> tuple[str, dict]:
    """The table of a ``lengths`` spec: for every N', the last value (mean ± std over seeds) of
    each of :data:`LENGTH_COLUMNS` (tags ``<tag with N'><name>``); returns its markdown and
    ``{column: {str(N'): {"mean", "std"}}}`` (a column no run logged is left out)."""
    train = spec["marks"][0]
    values = {}
    for column, name in LENGTH_COLUMNS.items():
        curve = final_curve(runs, {n: spec["tag"].format(n) + name for n in spec["lengths"]})
        if curve is not None:
            values[column] = {
                str(n): {"mean": m, "std": sd}
                for n, m, sd in zip(curve.steps, curve.mean, curve.std, strict=True)
            }
    if not values:
        return f"(no `{spec['tag'].format('<N>')}*` logged)", {}
    lines = [
        f"| N' (x N = {train}) | " + " | ".join(values) + " |",
        "|---" * (len(values) + 1) + "|",
    ]
    for n in spec["lengths"]:
        cells = [
            f"{format_value(v[str(n)]['mean'])} ± {format_value(v[str(n)]['std'])}"
            for v in values.values()
        ]
        lines.append(f"| {n} ({n / train:g}x) | " + " | ".join(cells) + " |")
    note = "\n\nMean ± std over the seeds of the last measurement; GD tuned for each N'.\n"
    return "\n".join(lines) + note, values


def across_variants(
    e: Experiment, spec: dict, seeds: int, root: Path, out: Path, quick: bool
) -> str:
    """One figure of ``spec["across"]`` for every variant of ``e``, with a dashed line wherever
    the tag ``spec["marks"]`` was logged (curriculum stages); returns its markdown."""
    curves, marks = {}, set()
    for variant in e.variant_names(quick):
        runs = [r for r in (read_scalars(run_dir(root, e, variant, s)) for s in range(seeds)) if r]
        curve = aggregate(runs, spec["across"])
        if curve is not None:
            curves[variant] = curve
        marks.update(t for r in runs for t in r.get(spec["marks"], {}) if t > 0)
    if not curves:
        return f"(no `{spec['across']}` logged)"
    name = f"{e.name}_{spec['file']}.png"
    title = f"{e.name}: {spec['across']} (dashed: {spec['marks']} changes)"
    figure = band_figure(
        curves, "step", spec["ylabel"], title, spec.get("logy", False), sorted(marks)
    )
    figure.savefig(out / name, dpi=110)
    return f"![{spec['file']}]({name})"


def report(
    experiments: list[Experiment],
    seeds: int,
    root: Path,
    out: Path,
    quick: bool,
    max_steps: int | None = None,
) -> dict:
    """Write ``report.md``, ``results.json`` and the PNGs under ``out``; return the results."""
    out.mkdir(parents=True, exist_ok=True)
    results, sections = {}, [f"# Reproduction report ({'quick' if quick else 'full'} scale)\n"]
    sections.append(
        "Every value is the mean ± std over seeds of the last logged value, at the step given. "
        f"Regenerate with `python scripts/reproduce.py{' --quick' if quick else ''} "
        f"--seeds {seeds}{'' if max_steps is None else f' --max-steps {max_steps}'}`.\n"
    )
    for e in experiments:
        steps = planned_steps(e, quick, max_steps)
        if quick:
            scale = f"reduced from the full {e.full_steps}"
        elif steps < e.full_steps:
            scale = f"stopped early: {steps} of the paper's {e.full_steps} steps, not its result"
        else:
            scale = "the full scale"
        sections.append(f"## {e.title}\n\n`{e.config}`, {steps} steps ({scale}).\n")
        results[e.name] = {}
        for variant in e.variant_names(quick):
            runs = [read_scalars(run_dir(root, e, variant, s)) for s in range(seeds)]
            runs = [r for r in runs if r]
            rows = [check.row(runs) for check in e.checks]
            results[e.name][variant] = rows
            if len(e.variants) > 1:
                sections.append(f"### {variant}\n")
            if variant in e.notes:
                sections.append(e.notes[variant] + "\n")
            sections.append(markdown_table(rows) + "\n")
            for spec in (f for f in e.figures if "across" not in f):
                if "lengths" in spec:
                    table, values = lengths_table(spec, runs)
                    results[e.name][f"{variant}/{spec['file']}"] = values
                    sections.append(table)
                curves, xlabel = figure_curves(spec, runs)
                if not curves:
                    continue
                name = f"{e.name}_{variant}_{spec['file']}.png"
                title = f"{e.name}{'' if variant == 'default' else ' ' + variant}: {spec['file']}"
                figure = band_figure(
                    curves,
                    xlabel,
                    spec["ylabel"],
                    title,
                    spec.get("logy", False),
                    spec.get("marks", ()),
                    logx="lengths" in spec,
                )
                if "lengths" in spec:  # N' itself as the ticks of the log axis
                    figure.axes[0].set_xticks(spec["lengths"], [str(n) for n in spec["lengths"]])
                    figure.axes[0].set_xticks([], minor=True)
                figure.savefig(out / name, dpi=110)
                sections.append(f"![{spec['file']}]({name})\n")
        for spec in (f for f in e.figures if "across" in f):
            sections.append(across_variants(e, spec, seeds, root, out, quick) + "\n")
    (out / "report.md").write_text("\n".join(sections))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> None:
    names = [e.name for e in EXPERIMENTS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced size, <= 15 min on 2 cores")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per run (default 3)")
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=str(names))
    parser.add_argument(
        "--max-steps",
        type=int,
        metavar="K",
        help="stop each full-scale run at K steps (resumed by a later, larger K)",
    )
    parser.add_argument("--report-only", action="store_true", help="no training, only the report")
    parser.add_argument("--logs", type=Path, default=ROOT / "logs" / "reproduce")
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds={args.seeds} is invalid: expected an integer >= 1")
    if args.max_steps is not None and (args.max_steps < 1 or args.quick):
        parser.error(
            f"--max-steps={args.max_steps} is invalid: expected an integer >= 1, without --quick"
        )
    scale = "quick" if args.quick else "full"
    experiments = [e for e in EXPERIMENTS if args.only is None or e.name in args.only]
    root, out = args.logs / scale, args.out / scale
    runs = [
        (e, v, s)
        for e in experiments
        for v in e.variant_names(args.quick)
        for s in range(args.seeds)
    ]
    estimate = estimate_seconds(experiments, args.seeds, args.quick, args.max_steps)
    print(f"{len(runs)} runs; estimated {estimate / 60:.0f} min on a 2-core CPU (less on a GPU)")
    if not args.report_only:
        start = time.perf_counter()
        for k, (e, variant, seed) in enumerate(runs, start=1):
            print(f"[{k}/{len(runs)}] {e.name}/{variant} seed {seed}: ", end="", flush=True)
            print(train(e, variant, seed, args.quick, root, args.max_steps), flush=True)
        print(f"all runs finished in {(time.perf_counter() - start) / 60:.1f} min")
    report(experiments, args.seeds, root, out, args.quick, args.max_steps)
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
