"""Figures, their targets, the rich table and results.json."""

from __future__ import annotations

import json
import math
import operator
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


@dataclass
class Figure:
    """One measured figure; `target` applies to the ratio when `on == "ratio"`, else to `value`."""

    bench: str
    name: str
    value: float
    unit: str = ""
    baseline: float | None = None
    op: str | None = None
    target: float | None = None
    on: str = "value"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        if self.op is None or self.target is None:
            return None
        subject = self.ratio if self.on == "ratio" else self.value
        if subject is None:
            return False
        return bool(_OPS[self.op](subject, self.target))

    @property
    def target_text(self) -> str:
        if self.op is None:
            return ""
        return f"{'ratio' if self.on == 'ratio' else 'value'} {self.op} {self.target:g}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ratio=self.ratio, passed=self.passed, target_text=self.target_text)
        return out


@dataclass
class BenchResult:
    name: str
    seconds: float
    figures: list[Figure] = field(default_factory=list)
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _num(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def render(results: list[BenchResult], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="kling-orchestrator benchmarks", show_lines=False)
    for col in ("benchmark", "figure", "value", "baseline", "ratio", "target", "result"):
        table.add_column(col, justify="right" if col in ("value", "baseline", "ratio") else "left")
    for res in results:
        if res.error:
            table.add_row(res.name, "ERROR", "", "", "", "", f"[red]{res.error[:80]}[/red]")
            continue
        for fig in res.figures:
            verdict = {True: "[green]PASS[/green]", False: "[red]MISS[/red]", None: ""}[fig.passed]
            table.add_row(
                fig.bench,
                fig.name,
                f"{_num(fig.value)} {fig.unit}".strip(),
                _num(fig.baseline),
                _num(fig.ratio),
                fig.target_text,
                verdict,
            )
    console.print(table)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_mib": mem_kib // 1024,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write(path: Path, results: list[BenchResult], *, smoke: bool) -> None:
    doc = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "smoke": smoke,
        "machine": machine(),
        "benchmarks": [
            {
                "name": r.name,
                "seconds": round(r.seconds, 2),
                "error": r.error,
                "details": r.details,
                "figures": [f.to_dict() for f in r.figures],
            }
            for r in results
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: the figure is a latency someone really saw)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]
