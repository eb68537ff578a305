"""Results as a console line per row, a markdown page fragment and a PNG chart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stats import Row


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _verdict(row: Row) -> str:
    if row.passed is None:
        return ""
    return "met" if row.passed else "missed"


def text_line(row: Row) -> str:
    floor = f"  floor {_number(row.floor)}" if row.floor is not None else ""
    ratio = f"  ratio {row.ratio:.2f}" if row.ratio is not None else ""
    target = f"  [{row.target}: {_verdict(row)}]" if row.target else ""
    return f"   {row.name}: {_number(row.agent)} {row.unit}{floor}{ratio}{target}"


def markdown(results: dict[str, Any], rows: Sequence[Row]) -> str:
    """Return the machine facts and the results table as markdown."""
    lines = [f"Mode: {results['mode']}, {results['seconds']} s in total.", ""]
    lines += ["| machine | |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in results["machine"].items()]
    lines += [
        "",
        "| section | measurement | agent | floor | ratio | target | result | note |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else ""
        floor = f"{_number(row.floor)} {row.unit}" if row.floor is not None else ""
        lines.append(
            f"| {row.section} | {row.name} | {_number(row.agent)} {row.unit} | {floor} | "
            f"{ratio} | {row.target} | {_verdict(row)} | {row.note} |"
        )
    return "\n".join(lines) + "\n"


def rows_from_json(results: dict[str, Any]) -> list[Row]:
    """Rebuild the rows of a saved ``benchmarks.json``."""
    fields = ("section", "name", "unit", "agent", "floor", "limit", "offset",
              "higher_is_better", "note")
    return [Row(**{name: row[name] for name in fields}) for row in results["rows"]]


def chart(rows: Sequence[Row], path: Path) -> Path | None:
    """Draw each row against its floor or target; return None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart drawn (pip install matplotlib)")
        return None

    # Rows with a floor show agent / floor; rows with only an absolute target show
    # agent / target, so that 1.0 is the target itself.
    shown = [row for row in rows if row.ratio is not None or row.limit is not None]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.36 * len(shown) + 1.6))
    positions = list(range(len(shown)))[::-1]
    for position, row in zip(positions, shown, strict=True):
        if row.passed is None:
            colour = "#999999"
        elif row.passed:
            colour = "#2b8a3e"
        else:
            colour = "#c92a2a"
        if row.ratio is not None:
            value, allowed = row.ratio, (row.bound or 0.0) / (row.floor or 1.0)
        else:
            value, allowed = row.agent / (row.limit or 1.0), 1.0
        ax.barh(position, value, color=colour)
        if row.limit is not None:
            ax.plot([allowed, allowed], [position - 0.4, position + 0.4], color="black")
    names = [row.name if row.ratio is not None else f"{row.name} (/ target)" for row in shown]
    ax.set_yticks(positions, names, fontsize=7)
    ax.axvline(1.0, color="#555555", linestyle=":", linewidth=1)
    ax.set_xlabel("agent / floor in the same run, or agent / target (black tick: target; "
                  "green met, red missed, grey no target)", fontsize=8)
    ax.set_title("attest-agent beside the cheapest implementation on the same machine",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
