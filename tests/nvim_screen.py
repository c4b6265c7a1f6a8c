"""Neovim's screen as its UI protocol draws it (ext_linegrid redraw events), rendered to SVG.

A test attaches this as Neovim's UI over msgpack-RPC, so the picture is what a terminal would show,
highlights included, with no terminal, X server or font on the machine. Never drives the editor itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.sax.saxutils import escape


@dataclass
class Screen:
    width: int = 0
    height: int = 0
    fg: int = 0xE0E2EA
    bg: int = 0x14161B
    attrs: dict[int, dict] = field(default_factory=dict)
    # Each cell is [text, highlight id].
    cells: list[list[list]] = field(default_factory=list)

    def apply(self, events: list) -> None:
        """Applies the batches of one `redraw` notification."""
        for name, *calls in events:
            handler = getattr(self, f"_on_{name}", None)
            if handler is not None:
                for args in calls:
                    handler(*args)

    def _on_default_colors_set(self, fg, bg, *_):
        if fg >= 0:
            self.fg = fg
        if bg >= 0:
            self.bg = bg

    def _on_hl_attr_define(self, hl_id, rgb_attr, *_):
        self.attrs[hl_id] = rgb_attr

    def _on_grid_resize(self, grid, width, height):
        self.width, self.height = width, height
        self.cells = [[[" ", 0] for _ in range(width)] for _ in range(height)]

    def _on_grid_clear(self, grid):
        self._on_grid_resize(grid, self.width, self.height)

    def _on_grid_line(self, grid, row, col, cells, *_):
        hl_id = 0
        for cell in cells:
            text = cell[0]
            if len(cell) > 1:
                hl_id = cell[1]
            for _ in range(cell[2] if len(cell) > 2 else 1):
                if col < self.width:
                    self.cells[row][col] = [text, hl_id]
                col += 1

    def _on_grid_scroll(self, grid, top, bot, left, right, rows, cols):
        moved = [row[left:right] for row in self.cells[top:bot]]
        for index in range(top, bot):
            source = index - top + rows
            if 0 <= source < len(moved) and (rows > 0 and index < bot - rows or rows < 0 and index >= top - rows):
                self.cells[index][left:right] = [list(c) for c in moved[source]]

    # -- reading it back -----------------------------------------------------------------------
    def row_text(self, row: int) -> str:
        return "".join(cell[0] for cell in self.cells[row])

    def colors(self, hl_id: int) -> tuple[int, int]:
        attr = self.attrs.get(hl_id, {})
        fg, bg = attr.get("foreground", self.fg), attr.get("background", self.bg)
        return (bg, fg) if attr.get("reverse") else (fg, bg)

    def runs(self, row: int) -> list[tuple[int, str, int]]:
        """(start column, text, highlight id) for each run of one highlight on a row."""
        runs: list[tuple[int, str, int]] = []
        for col, (text, hl_id) in enumerate(self.cells[row]):
            if runs and runs[-1][2] == hl_id:
                start, previous, _ = runs[-1]
                runs[-1] = (start, previous + text, hl_id)
            else:
                runs.append((col, text, hl_id))
        return runs

    def to_svg(self, cell_w: float = 8.4, cell_h: float = 18.0) -> str:
        width, height = self.width * cell_w, self.height * cell_h
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
               f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" '
               f'font-size="14">',
               f'<rect width="100%" height="100%" fill="#{self.bg:06x}"/>']
        for row in range(self.height):
            y = row * cell_h
            for col, text, hl_id in self.runs(row):
                fg, bg = self.colors(hl_id)
                x, w = col * cell_w, len(text) * cell_w
                if bg != self.bg:
                    out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{cell_h}" fill="#{bg:06x}"/>')
                if text.strip():
                    attr = self.attrs.get(hl_id, {})
                    style = (' font-style="italic"' if attr.get("italic") else "") + (
                        ' font-weight="bold"' if attr.get("bold") else "")
                    out.append(f'<text x="{x:.1f}" y="{y + cell_h * 0.75:.1f}" fill="#{fg:06x}"{style} '
                               f'textLength="{w:.1f}" xml:space="preserve">{escape(text)}</text>')
        out.append("</svg>")
        return "\n".join(out) + "\n"
