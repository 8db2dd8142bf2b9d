"""In-place edits of fleet.yaml that keep every other byte as it was (comments, order, quoting, spacing, newlines).

`edit_route(doc, project, RouteEdit(preferred, fallback))` rewrites only the scalars and entries it must, found by
the positions ruamel recorded: the preferred_pool value; the fallback_pool value, entry added after
preferred_pool, or entry removed; and the routing mode when adding or removing the fallback flips it between
preferred-only and preferred-with-fallback. Block and flow style (`routing: {…}`) are both edited as text, edits
applied right to left so that positions stay valid. Routing shared through YAML anchors, aliases or merge keys is
refused (an edit there would change other projects too). Pure text in, text out; the caller re-validates before
writing. Called by `fleet route set`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ruamel.yaml.comments import CommentedMap

from fleet.errors import FleetError
from fleet.schema.loading import LoadedDocument

_PLAIN_STOP = re.compile(r"\s+#|,|\}|\]|\s*$")


@dataclass(frozen=True)
class RouteEdit:
    preferred_pool: str
    fallback_pool: str | None


class SharedRouting(FleetError):
    """The routing to edit is shared through anchors/aliases/merge keys, or not where it can be edited as text."""


def _scalar_span(line: str, col: int) -> tuple[int, int]:
    """[start, end) of the scalar starting at 0-based `col` (plain, single- or double-quoted)."""
    if line[col:col + 1] in ("'", '"'):
        quote = line[col]
        end = line.index(quote, col + 1) + 1
        return col, end
    m = _PLAIN_STOP.search(line, col)
    return col, m.start() if m else len(line)


def _check_editable(doc: LoadedDocument, index: int, project_id: str) -> None:
    projects = doc.tree.get("projects") or []
    routing = projects[index].get("routing")
    shared = f"the routing of project {project_id!r} is shared through a YAML anchor, alias or merge key"
    hint = "edit it by hand (a change here would also change the projects that share it)"
    if not isinstance(routing, CommentedMap):
        raise SharedRouting(f"the routing of project {project_id!r} is not a mapping", hint=hint)
    if routing.anchor.value is not None or getattr(routing, "merge", None):
        raise SharedRouting(shared, hint=hint)
    for i, other in enumerate(projects):
        if i != index and isinstance(other, CommentedMap) and other.get("routing") is routing:
            raise SharedRouting(shared, hint=hint)


def edit_route(doc: LoadedDocument, project_id: str, edit: RouteEdit) -> str:
    data = doc.data or {}
    projects = data.get("projects") or []
    index = next((i for i, p in enumerate(projects) if isinstance(p, dict) and p.get("id") == project_id), None)
    if index is None:
        raise FleetError(f"no project {project_id!r} in {doc.file}")
    _check_editable(doc, index, project_id)
    routing = projects[index].get("routing") or {}
    base = ("projects", index, "routing")
    flow = doc.tree["projects"][index]["routing"].fa.flow_style()
    mode = routing.get("mode")
    new_mode = mode
    if mode == "preferred-with-fallback" and edit.fallback_pool is None:
        new_mode = "preferred-only"
    elif mode == "preferred-only" and edit.fallback_pool is not None:
        new_mode = "preferred-with-fallback"

    lines = doc.text.splitlines(keepends=True)
    pos = doc.positions

    def where(field: str, key: bool = False) -> tuple[int, int]:
        table = pos.keys if key else pos.values
        if (*base, field) not in table:
            raise SharedRouting(f"cannot locate routing.{field} of project {project_id!r} in {doc.file}",
                                hint="edit it by hand")
        line, col = table[(*base, field)]
        return line - 1, col - 1

    # (line, col, action, payload), applied right to left, bottom to top
    edits: list[tuple[int, int, str, str]] = []
    if routing.get("preferred_pool") != edit.preferred_pool:
        edits.append((*where("preferred_pool"), "replace", edit.preferred_pool))
    if new_mode != mode:
        edits.append((*where("mode"), "replace", str(new_mode)))
    if "fallback_pool" in routing:
        if edit.fallback_pool is None:
            edits.append((*where("fallback_pool", key=True), "remove-flow" if flow else "remove-line", ""))
        elif routing["fallback_pool"] != edit.fallback_pool:
            edits.append((*where("fallback_pool"), "replace", edit.fallback_pool))
    elif edit.fallback_pool is not None:
        if flow:
            line, col = where("preferred_pool")
            edits.append((line, _scalar_span(lines[line].rstrip("\r\n"), col)[1], "insert",
                          f", fallback_pool: {edit.fallback_pool}"))
        else:
            key_line, key_col = where("preferred_pool", key=True)
            value_line, _ = where("preferred_pool")
            edits.append((max(key_line, value_line) + 1, -1, "insert-line",
                          " " * key_col + f"fallback_pool: {edit.fallback_pool}"))

    for line, col, action, payload in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        if action == "insert-line":
            ref = lines[line - 1] if line - 1 < len(lines) else "\n"
            newline = "\r\n" if ref.endswith("\r\n") else "\n"
            if line - 1 < len(lines) and not lines[line - 1].endswith(("\n", "\r")):
                lines[line - 1] += newline
            lines.insert(line, payload + newline)
            continue
        text = lines[line]
        body = text.rstrip("\r\n")
        ending = text[len(body):]
        if action == "replace":
            if body[col:col + 1] in ("*", "&"):
                raise SharedRouting(f"routing of project {project_id!r} uses a YAML anchor or alias there",
                                    hint="edit it by hand")
            start, end = _scalar_span(body, col)
            old = body[start:end]
            new = f"{old[0]}{payload}{old[0]}" if old[:1] in ("'", '"') else payload
            lines[line] = body[:start] + new + body[end:] + ending
        elif action == "insert":
            lines[line] = body[:col] + payload + body[col:] + ending
        elif action == "remove-line":
            del lines[line]
        elif action == "remove-flow":
            vline, vcol = where("fallback_pool")
            if vline != line:
                raise SharedRouting(f"fallback_pool of project {project_id!r} spans lines in a flow mapping",
                                    hint="edit it by hand")
            end = _scalar_span(body, vcol)[1]
            before = body[:col].rstrip()
            if before.endswith(","):  # `…, fallback_pool: x` -> `…`
                start = len(before) - 1
            else:  # first entry: `{fallback_pool: x, …}` -> `{…}`
                rest = body[end:]
                stripped = rest.lstrip()
                if stripped.startswith(","):
                    end += len(rest) - len(stripped) + 1
                    end += len(body[end:]) - len(body[end:].lstrip())
                start = col
            lines[line] = body[:start] + body[end:] + ending
    return "".join(lines)
