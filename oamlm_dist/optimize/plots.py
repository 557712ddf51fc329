"""Plot of a hybrid optimisation: fine energies and fmax per round, ML rounds marked."""

from __future__ import annotations

import os


def plot_rounds(rounds: list[dict], path: str | os.PathLike, title: str = "",
                fmax_target: float | None = None) -> str:
    """Energy and fmax of every fine call; the marker tells how its geometry was reached."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"start": ("k", "s"), "ml": ("tab:blue", "o"), "fine-step": ("tab:orange", "^"),
              "backtrack": ("tab:red", "v")}
    calls = [r["fine_call"] for r in rounds]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(calls, [r["energy"] for r in rounds], color="0.6", lw=1)
    bottom.semilogy(calls, [r["fmax"] for r in rounds], color="0.6", lw=1)
    for kind, (color, marker) in styles.items():
        picked = [r for r in rounds if r["kind"] == kind]
        if not picked:
            continue
        label = {"ml": "after an ML round", "fine-step": "after a step on fine results",
                 "backtrack": "backtrack from the best point", "start": "start"}[kind]
        top.plot([r["fine_call"] for r in picked], [r["energy"] for r in picked], marker,
                 color=color, label=label)
        bottom.plot([r["fine_call"] for r in picked], [r["fmax"] for r in picked], marker,
                    color=color)
    if fmax_target:
        bottom.axhline(fmax_target, color="k", ls="--", lw=0.8, label="fmax target")
        bottom.legend(loc="upper right")
    top.set(ylabel="fine energy (eV)", title=title)
    bottom.set(xlabel="fine calculation", ylabel="fine fmax (eV/Å)")
    top.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
