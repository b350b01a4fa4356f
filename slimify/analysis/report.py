"""What a conversion found: every channel group, its width per switch, and why fixed groups
cannot slim. Plain data, printable as a table."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from slimify.analysis.groups import GroupTable
from slimify.analysis.plan import Plan

__all__ = ["GroupInfo", "ConversionReport", "build_report"]


@dataclass
class GroupInfo:
    index: int
    size: int  # channels at full width
    unit: int  # channels per unit (head_dim for heads, group width for grouped convs)
    channels: list[int]  # channels kept at each switch
    fixed: bool
    reason: str
    origins: list[str]  # layers producing these channels
    divisor: int = 8  # every width a multiple of it (smaller than asked for a narrow group, automatic divisor)
    full: str = ""  # not fixed, yet kept at full size at width 0.5: why (``analysis/full_width.py``)


@dataclass
class ConversionReport:
    model: str
    switches: tuple[float, ...]
    divisor: int
    groups: list[GroupInfo] = field(default_factory=list)
    seconds: float = 0.0
    padded_output: list[int] | None = None  # features computed per switch of a zero-padded output
    auto_divisor: bool = False  # ``divisor=None``: ``divisor`` is the largest, narrow groups use less
    design_floor: str | None = None  # one line when channels fixed by design keep width 0.5 above 0.35 of the MACs

    @property
    def fixed(self) -> list[GroupInfo]:
        """Groups that keep their full size: fixed ones, and those no narrower switch narrows."""
        return [g for g in self.groups if g.fixed or g.full]

    @property
    def slimmable(self) -> list[GroupInfo]:
        return [g for g in self.groups if not (g.fixed or g.full)]

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self, max_rows: int = 40) -> str:
        """Readable summary: slimmable groups (largest first) then every fixed group's reason."""
        shown = sorted(self.slimmable, key=lambda g: -g.size)
        cols = [max([len(f"w={w:g}")] + [len(str(g.channels[i])) for g in shown[:max_rows]])
                for i, w in enumerate(self.switches)]  # 4-digit channel counts under "w=1"
        head = " | ".join(f"{f'w={w:g}':>{n}}" for w, n in zip(self.switches, cols))
        lines = [f"{self.model}: {len(self.groups)} channel groups, {len(self.slimmable)} slimmable, "
                 f"{len(self.fixed)} fixed (switches {list(self.switches)}, {self._divisor_text()})",
                 "", f"{'group':>5} | {'size':>5} | {'unit':>4} | {'div':>3} | {head} | produced by"]
        for g in shown[:max_rows]:
            widths = " | ".join(f"{c:>{n}}" for c, n in zip(g.channels, cols))
            lines.append(f"{g.index:>5} | {g.size:>5} | {g.unit:>4} | {g.divisor:>3} | {widths} | "
                         f"{_first(g.origins, 3)}")
        if len(shown) > max_rows:
            lines.append(f"  … {len(shown) - max_rows} more slimmable groups")
        if self.padded_output is not None:
            lines += ["", f"model output: {self.padded_output[-1]} features at full width; narrower switches compute "
                          f"{', '.join(map(str, self.padded_output[:-1]))} and pad the rest with zeros (same output shape)"]
        if self.design_floor:
            lines += ["", self.design_floor]
        fixed = [g for g in self.fixed if g.reason != "model input channels"]
        if fixed:
            lines += ["", "fixed groups (keep their full size):"]
            for g in fixed:
                lines.append(f"  group {g.index} ({g.size} ch, {_first(g.origins, 2) or '-'}): {g.reason}")
        return "\n".join(lines)

    def _divisor_text(self) -> str:
        if not self.auto_divisor:
            return f"divisor {self.divisor}"
        smaller = sum(g.divisor < self.divisor for g in self.slimmable)
        return f"divisor {self.divisor}, automatic: {smaller} narrow groups use a smaller one"

    def __str__(self) -> str:
        return self.table()


def _first(names: list[str], n: int) -> str:
    """The first ``n`` names, and "…" when there are more."""
    return ", ".join(names[:n]) + (f", … ({len(names) - n} more)" if len(names) > n else "")


def build_report(model_name: str, table: GroupTable, plan: Plan, seconds: float,
                 full: dict[int, str] | None = None) -> ConversionReport:
    """``full``: why groups that are not fixed keep their full size at width 0.5 (by index)."""
    full = full or {}
    report = ConversionReport(model_name, plan.switches, plan.divisor, seconds=seconds,
                              padded_output=None if plan.output_widths is None else [sum(w) for w in plan.output_widths],
                              auto_divisor=plan.auto_divisor)
    for g in table.groups:
        channels = [k * g.unit for k in plan.kept[g.index]]
        report.groups.append(GroupInfo(g.index, g.size, g.unit, channels, g.fixed, g.reason or full.get(g.index, ""),
                                       list(g.origins),
                                       plan.group_divisors.get(g.index, plan.divisor), full.get(g.index, "")))
    return report
