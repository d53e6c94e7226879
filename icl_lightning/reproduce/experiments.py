"""The papers' experiments as records: a shipped config, the changes each run makes to it, its
variants, the checks against the paper and the figures of the report."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from icl_lightning.reproduce.figures import (
    InterpolationFigure,
    LengthFigure,
    PerIndexFigure,
    ReportFigure,
    ShiftFigure,
    StepFigure,
    VariantsFigure,
)
from icl_lightning.reproduce.kinds import EXACT, KindsTable, UpdatesFall, kind_variants
from icl_lightning.reproduce.verdicts import Check

Changes = Mapping[str, object]  # the CLI's dotted option (without --) -> value


@dataclass(frozen=True)
class Experiment:
    """One paper experiment: a shipped config, its variants, checks and figures.

    ``changes`` (and each variant's) map the CLI's dotted options (``a.b.c`` for ``--a.b.c``) to
    values, applied to the config as the CLI reads it (an overlay's ``config:`` base merged);
    ``callbacks.<Class>.<arg>`` sets a probe's argument. ``quick`` holds the extra changes of
    ``--quick``. ``full_steps`` is the paper's step count where it states one (paper A: 5,000
    for one layer, 50,000 deep, 10,000 for the token construction), else this project's full
    scale. ``seconds`` is the
    measured cost per 1,000 steps on a 2-core CPU and ``quick_seconds`` the measured wall time of
    one ``--quick`` run, start-up included (for the time estimates). ``quick_variants`` names the
    variants that ``--quick`` runs (default: all); ``notes`` says under a variant's heading in
    the report what sets it apart; ``variant_seconds`` replaces ``seconds`` for the variants
    that cost more. ``config`` is relative to the project's root (or absolute).
    """

    name: str
    title: str
    config: str
    full_steps: int
    quick_steps: int
    seconds: float
    quick_seconds: float
    variants: Mapping[str, Changes] = field(default_factory=lambda: {"default": {}})
    changes: Changes = field(default_factory=dict)
    quick: Changes = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    figures: tuple[ReportFigure, ...] = ()
    quick_variants: tuple[str, ...] | None = None
    notes: Mapping[str, str] = field(default_factory=dict)
    variant_seconds: Mapping[str, float] = field(default_factory=dict)

    def variant_names(self, quick: bool) -> list[str]:
        """The variants run at this scale: all of them, or ``quick_variants`` with ``--quick``."""
        if quick and self.quick_variants is not None:
            return list(self.quick_variants)
        return list(self.variants)


def deep(L: int, recurrent: bool = False) -> dict:
    """Paper A's settings for L layers: lr 5e-4 when L > 3, clipping 10 when L > 2, init 0.002/L,
    and (its official notebook's) activation clipping at 10 when L > 3."""
    return {
        "model.model.init_args.num_layers": L,
        "model.model.init_args.recurrent": recurrent,
        "model.model.init_args.init_scale": 0.002 / L,
        "model.model.init_args.clip": 10.0 if L > 3 else 0.0,
        "optimizer.init_args.lr": 5e-4 if L > 3 else 1e-3,
        "trainer.gradient_clip_val": 10.0 if L > 2 else 1e-3,
    }


#: N' of the context-length experiment: 0.5, 1, 2 and 4 times lsa_linear.yaml's N = 10
CONTEXT_TRAIN = 10
CONTEXT_LENGTHS = (5, 10, 20, 40)


def gd_at_lengths(every_n_steps: int, num_tasks: int) -> list[dict]:
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


PAPER_A = "von Oswald et al. 2023"
PAPER_B = "Dherin et al. 2025"
FIG2 = "Paper A, Fig. 2: one LSA layer against one GD step"
OOD = "Paper A, out of distribution: one LSA layer against GD"
ONE_STEP_LOSSES = {"trained LSA": "gd/loss_model", "GD": "gd/loss_gd"}
ALIGNMENT = {
    "model cos": "gd/model_cos",
    "model diff": "gd/model_diff",
    "preds diff": "gd/preds_diff",
}
DEEP_CHECKS = (
    Check(
        "trained / L-step GD loss",
        "gd/loss_model",
        f"{PAPER_A}: below 1 (the trained model beats L steps of GD)",
        "< 1",
        over="gd/loss_gd",
    ),
    Check(
        "trained / GD++ loss",
        "gd/loss_model",
        f"{PAPER_A}: close to 1 (the model is close to GD++)",
        "within 0.8-1.25",
        over="gd/loss_gd_pp",
    ),
    Check("model cos (GD++)", "gd/model_cos_pp", f"{PAPER_A}: near 1", ">= 0.99"),
)

LSA_ONE_LAYER = Experiment(
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
    checks=(
        Check("model cos", "gd/model_cos", f"{PAPER_A}: ~1", ">= 0.999"),
        Check(
            "loss ratio trained / GD",
            "gd/loss_ratio",
            f"{PAPER_A}: ~1 (official code 1.000-1.003)",
            "<= 1.003",
        ),
        Check("preds diff", "gd/preds_diff", f"{PAPER_A}: -> 0", "< 0.05"),
        Check("model diff", "gd/model_diff", f"{PAPER_A}: -> 0", "< 0.1"),
    ),
    figures=(
        InterpolationFigure("fig2_loss", f"{FIG2}: loss and interpolation", ONE_STEP_LOSSES),
        StepFigure("fig2_alignment", f"{FIG2}: alignment", ALIGNMENT, ylabel="", logy=False),
        ShiftFigure("ood_inputs", f"{OOD}: inputs x scaled by alpha", "inputs"),
        ShiftFigure("ood_weights", f"{OOD}: task weights w scaled by alpha", "weights"),
    ),
)

LSA_DEEP = Experiment(
    "lsa_deep",
    "Paper A, deep LSA: L layers against L-step GD and GD++ (d = 10, N = 10)",
    "configs/lsa_deep.yaml",
    full_steps=50000,
    quick_steps=200,
    seconds=22,  # per 1,000 steps, measured with 2 runs at once (--jobs 2) on the 2-core CPU
    variant_seconds={"L2": 6, "L3": 14, "L4": 22, "L5": 27, "L4_recurrent": 17},
    quick_seconds=30,
    variants={
        **{f"L{L}": deep(L) for L in (2, 3, 4, 5)},
        "L4_recurrent": deep(4, recurrent=True),
    },
    changes={"callbacks.GDAlignment.every_n_steps": 1000},
    notes={
        "L4_recurrent": "One layer's weights applied 4 times. Its GD++ here has one step "
        "size pair per step, more than a recurrent model can express; docs/results.md "
        "measures it against GD++ with one shared pair (`gd_plus_plus: shared`) too.",
    },
    quick={
        "data.init_args.batch_size": 512,
        "callbacks.GDAlignment.every_n_steps": 200,
        "callbacks.GDAlignment.num_tasks": 2048,
        "callbacks.GDAlignment.tuning_tasks": 2000,  # GD++ at L = 5: ~60 s on 10,000
        "callbacks.OODProbe.every_n_steps": 200,
        "callbacks.OODProbe.num_tasks": 1024,
    },
    checks=DEEP_CHECKS,
    figures=(
        StepFigure(
            "deep_loss",
            "Paper A, deep LSA: the trained model against L steps of GD and of GD++",
            {"trained": "gd/loss_model", "L-step GD": "gd/loss_gd", "GD++": "gd/loss_gd_pp"},
        ),
    ),
)

SINE_LOSSES = {
    "model": "deep/model_loss",
    "GD on features": "deep/feature_gd_loss",
    "GD on x": "deep/linear_gd_loss",
}

SINE = Experiment(
    "sine",
    "Paper A, beyond linear: MLP transformer on sine tasks against GD on its learned features",
    "configs/mlp_sine.yaml",
    full_steps=3000,
    quick_steps=600,
    seconds=25,
    quick_seconds=16,
    checks=(
        Check(
            "trained / GD-on-learned-features loss",
            "deep/model_loss",
            f"{PAPER_A}: close to 1 (the model does GD on its learned features)",
            "within 0.8-1.25",
            over="deep/feature_gd_loss",
        ),
        Check(
            "GD on learned features / GD on x loss",
            "deep/feature_gd_loss",
            f"{PAPER_A}: below 1 (features beat the raw inputs)",
            "< 1",
            over="deep/linear_gd_loss",
        ),
    ),
    figures=(
        StepFigure(
            "sine_loss",
            "Paper A, sine tasks: the model against GD on its learned features and on x",
            SINE_LOSSES,
        ),
    ),
)

TOKEN_CONSTRUCTION = Experiment(
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
    checks=(
        Check(
            "attention mass on own y",
            "copy/attention_mass",
            f"{PAPER_A}: the first layer copies (mass -> 1)",
            ">= 0.5",
        ),
        Check("copy R^2", "copy/r2", f"{PAPER_A}: y_i recoverable", ">= 0.9"),
        Check(
            "trained / 1-step GD loss",
            "copy/model_loss",
            f"{PAPER_A}: ~1 (after the copy, layer 2 does one GD step)",
            "<= 1.05",
            over="copy/gd_loss",
        ),
    ),
    figures=(
        StepFigure(
            "copy",
            "Paper A, normal tokens: how much layer 1 copies y_i next to x_i",
            {"attention mass": "copy/attention_mass", "copy R^2": "copy/r2"},
            ylabel="score",
            logy=False,
        ),
    ),
)

EQUIVALENCE = {"T_W(C, x)": "dw/loss_context", "T_{W+dW}(x)": "dw/loss_delta_w"}
FIG3 = "Paper B, Fig. 3: SGD finetuning on i examples against Delta W_i"
FINETUNING = {"SGD finetuning": "ft/sgd_loss_i", "Delta W_i": "ft/dw_loss_i"}

CONTEXTUAL_BLOCK = Experiment(
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
    checks=(
        Check(
            "max |T_W(C,x) - T_{W+dW}(x)| (float32)",
            "dw/max_abs_diff",
            f"{PAPER_B}, Theorem 2.2: equal (exact)",
            "<= 1e-5",
        ),
        Check(
            "||dW_N - dW_{N-1}|| / ||dW_2 - dW_1||",
            "dw/update_ratio",
            f"{PAPER_B}, Fig. 2: updates shrink to 0",
            "<= 0.1 (10x fall)",
        ),
    ),
    figures=(
        StepFigure("fig1_equivalence", "Paper B, Fig. 1: T_W(C, x) = T_{W+dW}(x)", EQUIVALENCE),
        PerIndexFigure(
            "fig2_convergence",
            "Paper B, Fig. 2: the updates ||dW_{i+1} - dW_i|| shrink as the context grows",
            {"||dW_{i+1} - dW_i||": "dw/update_i"},
            ylabel="norm",
        ),
        PerIndexFigure("fig3_finetune", FIG3, FINETUNING, ylabel="test loss", logy=False),
    ),
)

CONTEXTUAL_KINDS = Experiment(
    "contextual_kinds",
    "Paper B with every kind of contextual layer: softmax and linear attention, RNN, GRU, LSTM, "
    "diagonal and selective state-space layers, d = 2, N = 100 and 400",
    "configs/contextual_block.yaml",
    full_steps=5000,
    quick_steps=300,
    # per 1,000 steps, probes and start-up included: the 5,000-step runs of 2026-12-07, two at
    # a time (one thread each) on the 2-core CPU, median of the 3 seeds (51.8 min in all)
    seconds=4,
    variant_seconds={
        **{"rnn_N100": 13, "gru_N100": 36, "lstm_N100": 15, "diagonal_N100": 6},
        **{"selective_N100": 10, "softmax_N400": 7, "linear_N400": 6, "rnn_N400": 40},
        **{"gru_N400": 129, "lstm_N400": 89, "diagonal_N400": 10, "selective_N400": 40},
    },
    quick_seconds=30,
    variants=kind_variants((100, 400)),
    quick_variants=tuple(kind_variants((100,))),
    changes={
        "data.init_args.task.init_args.input_dim": 2,
        "data.init_args.batch_size": 64,
        "model.model.init_args.mlp_width": 128,
        "callbacks.DeltaWConvergence.per_token": True,
        "callbacks.DeltaWEquivalence.every_n_steps": 250,
        "callbacks.FinetuneComparison.every_n_steps": 1000,
    },
    quick={
        "callbacks.DeltaWEquivalence.every_n_steps": 100,
        "callbacks.DeltaWConvergence.every_n_steps": 300,
        "callbacks.FinetuneComparison.every_n_steps": 300,
    },
    checks=(
        Check(
            "max |T_W(C,x) - T_{W+dW}(x)| / rms (float32)",
            "dw/max_rel_diff",
            f"{PAPER_B}, Theorem 2.2: equal (exact) for any contextual layer",
            EXACT,
        ),
        UpdatesFall(),
    ),
    figures=(
        KindsTable(
            "kinds_updates",
            "Paper B, Fig. 2 for every kind: ||dW_{i+1} - dW_i|| / the first",
            ylabel="over the first update",
        ),
    ),
)

CURRICULUM = Experiment(
    "curriculum",
    "Beyond the papers: Garg et al.'s curriculum on one LSA layer (d = 20, N = 40)",
    "configs/lsa_curriculum.yaml",
    full_steps=3000,
    quick_steps=750,
    seconds=60,
    quick_seconds=14,
    variants={"with": {}, "without": {"data.init_args.curriculum": None}},
    quick={"data.init_args.batch_size": 512, "callbacks.GDAlignment.every_n_steps": 250},
    checks=(
        Check(
            "trained / 1-step GD loss",
            "gd/loss_model",
            "Garg et al. 2022: with or without, the model reaches the same loss",
            "<= 1.01",
            over="gd/loss_gd",
        ),
    ),
    figures=(
        VariantsFigure(
            "loss_with_and_without",
            "Garg et al.'s curriculum: validation loss with and without (dashed: a stage starts)",
            "val/loss",
            "curriculum/dims",
            ylabel="val/loss",
        ),
    ),
)

CONTEXT_LENGTH = Experiment(
    "context_length",
    f"Beyond the papers: one LSA layer trained at N = {CONTEXT_TRAIN}, measured at "
    f"N' = {', '.join(map(str, CONTEXT_LENGTHS))} against GD tuned for each N'",
    "configs/lsa_linear.yaml",
    full_steps=5000,
    quick_steps=600,
    seconds=28,
    quick_seconds=13,
    changes={"trainer.callbacks": gd_at_lengths(1000, 10000)},
    quick={"trainer.callbacks": gd_at_lengths(0, 2048), "data.init_args.batch_size": 1024},
    checks=(
        Check(
            f"loss trained / GD at N' = N = {CONTEXT_TRAIN}",
            f"gd/N{CONTEXT_TRAIN}/loss_ratio",
            f"{PAPER_A}: ~1 at the training length",
            "<= 1.01",
        ),
        Check(
            f"model cos at N' = {CONTEXT_LENGTHS[-1]}",
            f"gd/N{CONTEXT_LENGTHS[-1]}/model_cos",
            "(beyond the papers) GD's direction kept beyond N",
            ">= 0.99",
        ),
    ),
    figures=(
        LengthFigure(
            "loss_vs_context",
            f"One LSA layer trained at N = {CONTEXT_TRAIN}: loss at other context lengths N'",
            CONTEXT_LENGTHS,
            CONTEXT_TRAIN,
        ),
    ),
)

EXPERIMENTS = (
    LSA_ONE_LAYER,
    LSA_DEEP,
    SINE,
    TOKEN_CONSTRUCTION,
    CONTEXTUAL_BLOCK,
    CONTEXTUAL_KINDS,
    CURRICULUM,
    CONTEXT_LENGTH,
)


# Beyond the papers: Garg et al. (2022)'s toy set-up with their "tiny" GPT-2 (docs/bench.md).
_GARG_TOY_COMMON = {
    "data.init_args.curriculum": None,
    "data.init_args.batches_per_epoch": 500,
    "data.init_args.num_val_tasks": 1024,
    "optimizer.init_args.lr": 1e-3,
    "callbacks.BaselineCurves.every_n_steps": 0,
}
GARG_TOY = Experiment(
    "garg_toy",
    "Beyond the papers: Garg et al.'s GPT-2 (tiny) on linear regression (d = 5, 11 points) and "
    "sparse linear regression (d = 8, 2 non-zero, 16 points) beside the classic learners",
    "configs/garg_tiny.yaml",
    full_steps=5001,
    quick_steps=300,
    # per 1,000 steps: the 5,001-step runs of 2026-12-07 (one at a time, beside two other runs)
    seconds=50,
    variant_seconds={"sparse": 75},
    quick_seconds=200,
    changes=_GARG_TOY_COMMON,
    variants={
        "linear": {
            "data.init_args.task.init_args.input_dim": 5,
            "data.init_args.num_context": 10,
            "model.init_args.model.init_args.num_positions": 11,
        },
        "sparse": {
            "data.init_args.task": {
                "class_path": "icl_lightning.data.SparseLinear",
                "init_args": {
                    "input_dim": 8,
                    "num_nonzero": 2,
                    "input_distribution": "normal",
                    "input_range": 1.0,
                    "weight_scale": 1.0,
                    "noise_std": 0.0,
                },
            },
            "data.init_args.num_context": 15,
            "model.init_args.model.init_args.num_positions": 16,
        },
    },
    checks=(
        Check(
            "model / 3-NN loss at k = N",
            "baselines/loss_model",
            "Garg et al. 2022: far below 3-NN, tracking least squares (0 from k = d on)",
            "<= 0.5",
            over="baselines/loss_nn_3",
        ),
    ),
)

EXPERIMENTS = (*EXPERIMENTS, GARG_TOY)
