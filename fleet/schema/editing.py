"""In-place edits of fleet.yaml that keep every other byte as it was (comments, order, quoting, spacing).

`edit_route(doc, project, RouteEdit(preferred, fallback))` rewrites only the scalars and lines it must, found by
the positions ruamel recorded: the preferred_pool value; the fallback_pool value, line added after
preferred_pool, or line removed; and the routing mode when adding or removing the fallback flips it between
preferred-only and preferred-with-fallback. A flow-style routing mapping (`routing: {…}`) is re-emitted with
ruamel round-trip for that one mapping. Pure text in, text out; the caller re-validates before writing.
Called by `fleet route set`.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from ruamel.yaml.comments import CommentedMap

from fleet.errors import FleetError
from fleet.schema.loading import LoadedDocument, make_yaml

_PLAIN_END = re.compile(r"\s+#|\s*$")


@dataclass(frozen=True)
class RouteEdit:
    preferred_pool: str
    fallback_pool: str | None


def _scalar_span(line: str, col: int) -> tuple[int, int]:
    """[start, end) of the scalar starting at 0-based `col` (plain, single- or double-quoted)."""
    if line[col:col + 1] in ("'", '"'):
        quote = line[col]
        end = line.index(quote, col + 1) + 1
        return col, end
    stop = len(line)
    for m in re.finditer(r"\s+#|,|\}|\]|\s*$", line[col:]):
        stop = col + m.start()
        break
    return col, stop


def _replace_scalar(lines: list[str], pos: tuple[int, int], value: str) -> None:
    line_no, col = pos[0] - 1, pos[1] - 1
    line = lines[line_no]
    start, end = _scalar_span(line.rstrip("\n"), col)
    old = line[start:end]
    new = value
    if old[:1] in ("'", '"'):
        new = f"{old[0]}{value}{old[0]}"
    lines[line_no] = line[:start] + new + line[end:]


def edit_route(doc: LoadedDocument, project_id: str, edit: RouteEdit) -> str:
    data = doc.data or {}
    projects = data.get("projects") or []
    index = next((i for i, p in enumerate(projects) if isinstance(p, dict) and p.get("id") == project_id), None)
    if index is None:
        raise FleetError(f"no project {project_id!r} in {doc.file}")
    routing = projects[index].get("routing") or {}
    base = ("projects", index, "routing")
    tree_routing = doc.tree["projects"][index]["routing"]
    mode = routing.get("mode")
    new_mode = mode
    if mode == "preferred-with-fallback" and edit.fallback_pool is None:
        new_mode = "preferred-only"
    elif mode == "preferred-only" and edit.fallback_pool is not None:
        new_mode = "preferred-with-fallback"

    if isinstance(tree_routing, CommentedMap) and tree_routing.fa.flow_style():
        return _edit_flow(doc, index, edit, new_mode)

    lines = doc.text.splitlines(keepends=True)
    pos = doc.positions
    removals: list[int] = []
    inserts: list[tuple[int, str]] = []
    if routing.get("preferred_pool") != edit.preferred_pool:
        _replace_scalar(lines, pos.values[(*base, "preferred_pool")], edit.preferred_pool)
    if new_mode != mode:
        _replace_scalar(lines, pos.values[(*base, "mode")], new_mode)
    if "fallback_pool" in routing:
        fb_line = pos.keys[(*base, "fallback_pool")][0] - 1
        if edit.fallback_pool is None:
            removals.append(fb_line)
        elif routing["fallback_pool"] != edit.fallback_pool:
            _replace_scalar(lines, pos.values[(*base, "fallback_pool")], edit.fallback_pool)
    elif edit.fallback_pool is not None:
        key_line, key_col = pos.keys[(*base, "preferred_pool")]
        newline = "\r\n" if lines[key_line - 1].endswith("\r\n") else "\n"
        inserts.append((key_line, " " * (key_col - 1) + f"fallback_pool: {edit.fallback_pool}{newline}"))
    for line_no in sorted(removals, reverse=True):
        del lines[line_no]
    for after, text in sorted(inserts, reverse=True):
        lines.insert(after, text)
    return "".join(lines)


def _edit_flow(doc: LoadedDocument, index: int, edit: RouteEdit, new_mode: str) -> str:
    """Re-emit the whole document through ruamel (only for flow-style routing mappings)."""
    yaml = make_yaml()
    tree = yaml.load(doc.text)
    routing = tree["projects"][index]["routing"]
    routing["preferred_pool"] = edit.preferred_pool
    routing["mode"] = new_mode
    if edit.fallback_pool is None:
        routing.pop("fallback_pool", None)
    else:
        routing["fallback_pool"] = edit.fallback_pool
    out = io.StringIO()
    yaml.dump(tree, out)
    return out.getvalue()
