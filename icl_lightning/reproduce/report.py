"""The reproduction's report: ``report.md``, ``results.json`` and one PNG per figure.

Every number is the mean +- std over the seeds of the last logged value, next to the paper's,
with a verdict that says what a run of its scale can show (:mod:`.verdicts`).
"""

import json
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from icl_lightning.reproduce.experiments import Experiment
from icl_lightning.reproduce.figures import ReportFigure
from icl_lightning.reproduce.runs import Run, planned_steps
from icl_lightning.reproduce.scalars import Scalars, read_scalars
from icl_lightning.reproduce.verdicts import LossFalls, Scale, markdown_table


def scale_text(e: Experiment, steps: int, quick: bool) -> str:
    """How the run's steps compare with the paper's, for the experiment's heading."""
    if quick:
        return f"reduced from the paper's {e.full_steps}: the verdicts say what such a run shows"
    if steps < e.full_steps:
        return f"stopped early: {steps} of the paper's {e.full_steps} steps, not its result"
    return "the full scale"


def seeds_scalars(e: Experiment, variant: str, seeds: int, logs: Path, quick: bool) -> list:
    """The scalars of each seed's run of ``variant`` that logged any (the others left out)."""
    runs = [read_scalars(Run(e, variant, s, quick, logs).directory) for s in range(seeds)]
    return [r for r in runs if r]


def figure_markdown(figure: ReportFigure, drawn: Figure, name: str, out: Path) -> str:
    """Save ``drawn`` as ``out/name`` and return its markdown (with the figure's caption)."""
    drawn.savefig(out / name, dpi=110)
    caption = f"\n\n{figure.caption}" if figure.caption else ""
    return f"![{figure.title}]({name}){caption}\n"


def variant_section(
    e: Experiment, variant: str, runs: Sequence[Scalars], scale: Scale, out: Path, results: dict
) -> list[str]:
    """The markdown of one variant: heading and note, the checks' table, its figures."""
    sections = []
    if len(e.variants) > 1:
        sections.append(f"### {variant}\n")
    if variant in e.notes:
        sections.append(e.notes[variant] + "\n")
    checks = (*e.checks, LossFalls()) if not scale.comparable else e.checks
    rows = [check.row(runs, scale) for check in checks]
    results[e.name][variant] = rows
    sections.append(markdown_table(rows) + "\n")
    suffix = "" if variant == "default" else f" ({variant})"
    for figure in (f for f in e.figures if not f.across_variants):
        table = figure.table(runs)
        if table is not None:
            results[e.name][f"{variant}/{figure.file}"] = table[1]
            sections.append(table[0])
        drawn = figure.draw(runs, figure.title + suffix)
        if drawn is not None:
            name = f"{e.name}_{variant}_{figure.file}.png"
            sections.append(figure_markdown(figure, drawn, name, out))
    return sections


def write_report(
    experiments: Sequence[Experiment],
    seeds: int,
    logs: Path,
    out: Path,
    quick: bool,
    max_steps: int | None = None,
) -> dict:
    """Write ``report.md``, ``results.json`` and the PNGs under ``out`` from the runs under
    ``logs`` (``<--logs>/<quick|full>``); return the results."""
    out.mkdir(parents=True, exist_ok=True)
    results, sections = {}, [f"# Reproduction report ({'quick' if quick else 'full'} scale)\n"]
    sections.append(
        "Every value is the mean ± std over seeds of the last logged value, at the step given. "
        "'reproduced' / 'differs' are said only of runs at the paper's step count; a reduced "
        "run is 'not comparable', and checks instead that its training loss falls. "
        f"Regenerate with `icl-reproduce{' --quick' if quick else ''} --seeds {seeds}"
        f"{'' if max_steps is None else f' --max-steps {max_steps}'}`.\n"
    )
    for e in experiments:
        steps = planned_steps(e, quick, max_steps)
        sections.append(
            f"## {e.title}\n\n`{e.config}`, {steps} steps ({scale_text(e, steps, quick)}).\n"
        )
        results[e.name] = {}
        scale = Scale(steps, e.full_steps)
        variants = {v: seeds_scalars(e, v, seeds, logs, quick) for v in e.variant_names(quick)}
        for variant, runs in variants.items():
            sections += variant_section(e, variant, runs, scale, out, results)
        for figure in (f for f in e.figures if f.across_variants):
            table = figure.table_variants(variants)
            if table is not None:
                results[e.name][figure.file] = table[1]
                sections.append(table[0])
            drawn = figure.draw_variants(variants, figure.title)
            if drawn is None:
                sections.append(f"(no `{figure.tag}` logged)\n")
                continue
            sections.append(figure_markdown(figure, drawn, f"{e.name}_{figure.file}.png", out))
    (out / "report.md").write_text("\n".join(sections))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results
