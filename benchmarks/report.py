"""Tables, targets and the Markdown of RESULTS.md."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

COMPARISONS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        lines += ["", *self.notes] if self.notes else []
        return "\n".join(lines) + "\n"


@dataclass
class Target:
    """One acceptance target of issue 7: a measured ratio against its limit, with profiles when it misses."""

    name: str
    measured: float
    comparison: str
    limit: float
    explanation: str = ""
    profiles: dict[str, str] = field(default_factory=dict)  # step name -> torch.profiler table, filled on a miss

    @property
    def holds(self) -> bool:
        return COMPARISONS[self.comparison](self.measured, self.limit)

    def row(self) -> list[str]:
        return [
            self.name,
            f"{self.measured:.2f}×",
            f"{self.comparison} {self.limit:.2f}×",
            "yes" if self.holds else "NO",
        ]


@dataclass
class Section:
    title: str
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"## {self.title}", ""]
        if self.intro:
            parts += [self.intro, ""]
        return "\n".join(parts) + "\n" + "\n".join(table.markdown() for table in self.tables)


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def mebibytes(size: int | None) -> str:
    return "n/a" if size is None else f"{size / 2**20:.1f}"


def ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def render(header: list[str], sections: list[Section], closing: list[str]) -> str:
    """The whole RESULTS.md: header, the targets, every section, and the profiles of missed targets."""
    targets = [target for section in sections for target in section.targets]
    lines = [*header, "", "## Targets (issue 7 sets them for the CPU; measured in this run)", ""]
    table = Table("Ratios to the baseline in the same run", ["target", "measured", "limit", "holds"])
    table.rows = [target.row() for target in targets]
    lines.append(table.markdown())
    for section in sections:
        lines.append(section.markdown())
    missed = [target for target in targets if not target.holds]
    if missed:
        lines += ["## Missed targets: explanation and profiles", ""]
        for target in missed:
            lines += [f"### {target.name}: {target.measured:.2f}× (limit {target.comparison} {target.limit:.2f}×)", ""]
            if target.explanation:
                lines += [target.explanation, ""]
            for step, text in target.profiles.items():
                lines += [f"torch.profiler, one step of {step}, top operators:", "", "```", text, "```", ""]
    lines += closing
    return "\n".join(lines).rstrip() + "\n"
