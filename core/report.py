"""The report :func:`dclszoo.patch` returns: which modules were replaced, by what, and parameter counts."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ReplacedModule", "PatchReport"]


@dataclass(frozen=True)
class ReplacedModule:
    """One replaced module.

    Attributes:
        name: Fully qualified name in the model (``"stages.0.blocks.1.conv_dw"``).
        old: Class name of the module that was there.
        new: Class name of the module put in its place.
        params_before: Parameters of the old module.
        params_after: Parameters of the new module.
    """

    name: str
    old: str
    new: str
    params_before: int
    params_after: int


@dataclass
class PatchReport:
    """What a patch did.

    Attributes:
        plugin: Name of the plugin that handled the model (``"generic"`` for the core fallback).
        replaced: The replaced modules, in model order (a module shared by several parents appears once).
    """

    plugin: str
    replaced: list[ReplacedModule] = field(default_factory=list)

    @property
    def params_before(self) -> int:
        """Parameters of the replaced modules before patching."""
        return sum(r.params_before for r in self.replaced)

    @property
    def params_after(self) -> int:
        """Parameters of their replacements."""
        return sum(r.params_after for r in self.replaced)

    def __len__(self) -> int:
        return len(self.replaced)

    def __str__(self) -> str:
        header = ("module", "old", "new", "params before", "params after")
        rows = [(r.name, r.old, r.new, f"{r.params_before:,}", f"{r.params_after:,}") for r in self.replaced]
        rows.append(("total", "", f"{len(self.replaced)} replaced", f"{self.params_before:,}", f"{self.params_after:,}"))
        widths = [max(len(header[c]), *(len(row[c]) for row in rows)) for c in range(len(header))]

        def line(cells) -> str:
            left = [cells[c].ljust(widths[c]) for c in range(3)]
            right = [cells[c].rjust(widths[c]) for c in range(3, 5)]
            return "  ".join(left + right).rstrip()

        rule = "  ".join("-" * w for w in widths)
        body = [line(header), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])]
        return f"PatchReport (plugin {self.plugin!r})\n" + "\n".join(body)
