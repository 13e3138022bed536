"""The training plot both trainers redraw after each tick (matplotlib is the optional `plots` extra)."""

from __future__ import annotations

from pathlib import Path

from organic_sd.files import atomic_write


def training_plot(run: Path, log: list[dict], panels: list[tuple[str, str, bool]]) -> None:
    """Redraw run/plot.png: one panel per (log key, label, log scale) over training minutes, then the
    search's best validation loss within each tick. Does nothing without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # the JSONL log has the same numbers
    t = [r["time"] / 60 for r in log]
    fig, ax = plt.subplots(1, len(panels) + 1, figsize=(4.4 * (len(panels) + 1), 3.6))
    for i, (key, label, log_scale) in enumerate(panels):
        pts = [(tt, r[key]) for tt, r in zip(t, log) if key in r]  # a key newer than the run's first ticks
        ax[i].plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}")
        ax[i].set(xlabel="training minutes", ylabel=label, title=f"held-out {label}",
                  yscale="log" if log_scale else "linear")
    for r in log:
        c = r.get("curve") or []
        if c:  # the fit's curve: seconds since the tick's fit started
            ax[-1].plot([(r["time"] - r["fit_seconds"] + s) / 60 for s, _, _ in c], [v for _, _, v in c], color="C2")
    ax[-1].set(xlabel="training minutes", ylabel="best search val loss (sum over outputs)", yscale="log",
               title="search: best candidate per tick")
    fig.tight_layout()
    atomic_write(run / "plot.png", lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
