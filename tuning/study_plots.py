"""A study's plots as PNG files: optimization history, Pareto front (multi-objective) and
parameter importances, drawn with Optuna's matplotlib visualization.

Importing this module imports matplotlib (about 1 s): the CLI imports it only to draw
(``jaxsched tune --no-plots`` does not).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
from optuna.visualization import matplotlib as ovm

from tuning.objectives import Objective
from tuning.optuna_logs import quiet

__all__ = ["save_plots"]


def save_plots(study, objective: Objective, out_dir: str | Path) -> tuple[list[str], list[str]]:
    """Optimization history, Pareto front (multi-objective) and parameter importances as PNG
    files in ``out_dir`` (Optuna's matplotlib visualization). Returns (paths, notes on plots
    skipped)."""
    matplotlib.use("Agg")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, notes = [], []
    names = list(objective.names)

    def save(ax, fname):
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(8, 5)
        path = out / fname
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(str(path))

    with quiet():
        if objective.kind == "weighted":
            jobs = [("optimization_history.png",
                     lambda: ovm.plot_optimization_history(study, target_name=names[0]))]
            jobs.append(("param_importances.png",
                         lambda: ovm.plot_param_importances(study, target_name=names[0])))
        else:
            jobs = []
            for i, nm in enumerate(names):
                jobs.append((f"optimization_history_{nm}.png",
                             lambda i=i, nm=nm: ovm.plot_optimization_history(
                                 study, target=lambda t: t.values[i], target_name=nm)))
            if 2 <= len(names) <= 3:
                jobs.append(("pareto_front.png",
                             lambda: ovm.plot_pareto_front(study, target_names=names)))
            sign = -1.0 if objective.directions[0] == "maximize" else 1.0  # importance of low values
            jobs.append((f"param_importances_{names[0]}.png",
                         lambda: ovm.plot_param_importances(
                             study, target=lambda t: sign * t.values[0], target_name=names[0])))
        if len({p for t in study.get_trials(deepcopy=False) for p in t.params}) < 2:
            jobs = [j for j in jobs if not j[0].startswith("param_importances")]
            notes.append("param_importances: skipped (one searched parameter: its importance "
                         "is 1 by definition)")
        for fname, make in jobs:
            try:
                save(make(), fname)
            except Exception as err:  # too few trials, a single distinct value, ...
                notes.append(f"{fname}: skipped ({str(err).splitlines()[0] if str(err) else type(err).__name__})")
                plt.close("all")
    return paths, notes
