"""Reading fleet.yaml: safe file checks, ruamel.yaml round-trip parsing, plain data plus a position index.

`load_document(path)` never raises for bad input: it returns a LoadedDocument whose `data` is plain JSON-like
Python (dicts, lists, str, int, float, bool, None) or None, its `positions` (JSON path -> line/col), the
round-trip tree (`tree`, for commands that edit the file in place, keeping comments) and the diagnostics of
everything that went wrong (missing file, directory, binary, too large, empty, YAML syntax, duplicate keys,
unsupported tags, alias bombs, recursive aliases, nesting too deep). Deep nesting and recursive aliases are
caught before or while composing: ruamel's scanner slows down on deep flow nesting, and its constructor
silently turns a recursive alias into null. Called by fleet.schema.api and by `fleet route set` (through the CLI).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.composer import Composer, ComposerError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import ScalarNode

from fleet.schema.diagnostics import Diagnostic, PathPart

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 64
MAX_EXPANDED_CHARS = 2 * MAX_FILE_BYTES  # text in scalars after aliases are expanded
# ruamel's scanner is quadratic in flow nesting ('[[[[…' takes ~1 s): refuse such a run before parsing
_FLOW_RUN = re.compile(r"(?:[\[{]\s*){" + str(MAX_DEPTH + 1) + "}")


@dataclass
class PositionIndex:
    """Where each JSON path sits in the file: 1-based (line, col) of the value, and of its key."""

    values: dict[tuple[PathPart, ...], tuple[int, int]] = field(default_factory=dict)
    keys: dict[tuple[PathPart, ...], tuple[int, int]] = field(default_factory=dict)

    def of_value(self, path: Sequence[PathPart]) -> tuple[int, int]:
        """The value at `path`, or its nearest ancestor that has a position."""
        path = tuple(path)
        while path:
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (1, 1))

    def of_key(self, path: Sequence[PathPart]) -> tuple[int, int]:
        """The key of the mapping entry at `path` (falls back to the value position)."""
        path = tuple(path)
        if path in self.keys:
            return self.keys[path]
        return self.of_value(path)


@dataclass
class LoadedDocument:
    file: str
    data: Any = None
    tree: Any = None
    text: str = ""
    positions: PositionIndex = field(default_factory=PositionIndex)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.data is not None and not self.diagnostics


class _RecursiveAlias(ComposerError):
    pass


class _Composer(Composer):
    """ruamel's composer, refusing an alias to a collection that is still being composed (its ancestor).

    A re-defined anchor is legal YAML: ruamel's warning about it (printed on stderr) is turned off.
    """

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.parser.check_event(AliasEvent):
            event = self.parser.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and not isinstance(target, ScalarNode) and target.end_mark is None:
                raise _RecursiveAlias(None, None, f"recursive alias *{event.anchor} refers to a node that contains it",
                                      event.start_mark)
        return super().compose_node(parent, index)


def make_yaml() -> YAML:
    """The one ruamel.yaml configuration fleet uses to read and to write fleet.yaml."""
    yaml = YAML(typ="rt")
    yaml.Composer = _Composer
    yaml.max_depth = MAX_DEPTH + 1  # the root counts as one level
    yaml.allow_duplicate_keys = False
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


class _TooBig(Exception):
    def __init__(self, path: tuple[PathPart, ...]) -> None:
        super().__init__("too big")
        self.path = path


class _Unsupported(Exception):
    def __init__(self, message: str, path: tuple[PathPart, ...]) -> None:
        super().__init__(message)
        self.path = path


class _Converter:
    """Turns a ruamel round-trip tree into plain data, recording positions; bounded in size and depth."""

    def __init__(self) -> None:
        self.nodes = 0
        self.chars = 0
        self.positions = PositionIndex()
        self._stack: set[int] = set()

    def convert(self, node: Any, path: tuple[PathPart, ...]) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES or self.chars > MAX_EXPANDED_CHARS:
            raise _TooBig(path)
        if len(path) > MAX_DEPTH:
            raise _Unsupported(f"nesting deeper than {MAX_DEPTH} levels", path)
        if isinstance(node, CommentedMap | CommentedSeq):
            tag = getattr(getattr(node, "tag", None), "value", None)
            if tag is not None:  # e.g. !!python/object/apply: ruamel keeps the data and drops the tag's meaning
                raise _Unsupported(f"YAML tag {_short_tag(tag)!r} is not supported", path)
            if id(node) in self._stack:
                raise _Unsupported("a recursive alias refers to itself", path)
            self._stack.add(id(node))
            try:
                return self._convert_container(node, path)
            finally:
                self._stack.discard(id(node))
        return self._scalar(node, path)

    def _convert_container(self, node: CommentedMap | CommentedSeq, path: tuple[PathPart, ...]) -> Any:
        if isinstance(node, CommentedMap):
            out: dict[str, Any] = {}
            for key, value in node.items():
                skey = key if isinstance(key, str) else _scalar_text(key)
                child = (*path, skey)
                pos = _map_pos(node, key)
                if pos:
                    self.positions.keys[child] = (pos[0] + 1, pos[1] + 1)
                    self.positions.values[child] = (pos[2] + 1, pos[3] + 1)
                out[skey] = self.convert(value, child)
            return out
        items = []
        for i, value in enumerate(node):
            child = (*path, i)
            pos = _seq_pos(node, i)
            if pos:
                self.positions.values[child] = (pos[0] + 1, pos[1] + 1)
            items.append(self.convert(value, child))
        return items

    def _scalar(self, node: Any, path: tuple[PathPart, ...]) -> Any:
        if node is None or isinstance(node, bool):
            return node
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return float(node)
        if isinstance(node, str):
            self.chars += len(node)
            return str(node)
        if isinstance(node, dt.datetime):
            text = node.isoformat()
            return text if node.tzinfo else text + "Z"
        if isinstance(node, dt.date):
            return node.isoformat()
        if isinstance(node, TaggedScalar):
            if node.tag.value == "tag:yaml.org,2002:str":  # `!!str 2` is a plain way to quote
                return str(node.value)
            raise _Unsupported(f"YAML tag {_short_tag(node.tag.value)!r} is not supported", path)
        raise _Unsupported(f"unsupported YAML value of type {type(node).__name__}", path)


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def _scalar_text(key: Any) -> str:
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _map_pos(node: CommentedMap, key: Any) -> list[int] | None:
    try:
        return node.lc.data.get(key)
    except Exception:  # ruamel keeps no position for merged (<<) keys
        return None


def _seq_pos(node: CommentedSeq, index: int) -> list[int] | None:
    try:
        return node.lc.data.get(index)
    except Exception:
        return None


def _fail(doc: LoadedDocument, message: str, line: int = 0, col: int = 0, *, code: str, hint: str | None = None):
    doc.diagnostics.append(Diagnostic(message, doc.file, line, col, code=code, hint=hint))
    return doc


def read_text(path: Path, doc: LoadedDocument) -> str | None:
    """Read the file as UTF-8 text with the safety checks; on failure add one diagnostic and return None."""
    try:
        if not path.exists():
            _fail(doc, "no such file", code="file.missing", hint="create it from fleet.yaml.example, or pass -f FILE")
            return None
        if path.is_dir():
            _fail(doc, "is a directory, not a fleet.yaml file", code="file.directory", hint="pass the file: -f DIR/fleet.yaml")
            return None
        size, raw = path.stat().st_size, b""
        if size <= MAX_FILE_BYTES:
            # bounded read: /dev/zero or a growing file reports a size that lies; opened without blocking, so
            # that a FIFO nobody writes to reads as empty instead of hanging (a pipe with a writer reads normally)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as fh:
                os.set_blocking(fd, True)
                raw = fh.read(MAX_FILE_BYTES + 1)
            size = max(size, len(raw))
        if size > MAX_FILE_BYTES:
            shown = f"{size / 1e6:.1f} MB" if size > len(raw) else f"more than {MAX_FILE_BYTES / 1e6:.1f} MB"
            _fail(doc, f"file is too large ({shown}; the limit is {MAX_FILE_BYTES // (1024 * 1024)} MiB)",
                  code="file.too-large", hint="a fleet.yaml describes pools, not hosts: it should stay small")
            return None
    except OSError as exc:
        _fail(doc, f"cannot read file: {exc.strerror or exc}", code="file.unreadable")
        return None
    if b"\x00" in raw:
        nul = raw.index(b"\x00")
        line = raw[:nul].count(b"\n") + 1
        col = nul - (raw.rfind(b"\n", 0, nul) + 1) + 1
        _fail(doc, "is a binary file, not YAML text (NUL byte)", line, col, code="file.binary")
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        _fail(doc, "is not valid UTF-8 text", line, col, code="file.encoding")
        return None
    return text


def parse_text(text: str, doc: LoadedDocument) -> LoadedDocument:
    """Parse YAML text into doc.tree / doc.data / doc.positions, adding diagnostics instead of raising."""
    doc.text = text
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        return _fail(doc, "file is empty", 1, 1, code="file.empty", hint="start from fleet.yaml.example")
    run = _FLOW_RUN.search(text)
    if run:
        line = text.count("\n", 0, run.start()) + 1
        col = run.start() - (text.rfind("\n", 0, run.start()) + 1) + 1
        return _fail(doc, f"nesting deeper than {MAX_DEPTH} levels", line, col, code="yaml.depth")
    yaml = make_yaml()
    try:
        tree = yaml.load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if exc.context_mark and "end of stream" in (exc.problem or ""):
            mark = exc.context_mark  # e.g. an unclosed quote: point where it opens, not at the end of the file
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        if isinstance(exc, _RecursiveAlias):
            return _fail(doc, problem, line, col, code="yaml.recursive-alias", hint="an alias may not refer to a node that contains it")
        if type(exc).__name__ == "MaxDepthExceededError":
            return _fail(doc, f"nesting deeper than {MAX_DEPTH} levels", line, col, code="yaml.depth")
        if "duplicate key" in str(exc).lower() or type(exc).__name__ == "DuplicateKeyError":
            problem = _duplicate_key_message(exc)
            return _fail(doc, problem, line, col, code="yaml.duplicate-key", hint="each key may appear once per mapping")
        if exc.context and exc.problem:
            problem = f"{exc.context.strip()}: {exc.problem.strip()}"
        hint = "indent with spaces: YAML does not allow tabs" if "'\\t'" in problem else None
        return _fail(doc, f"invalid YAML: {problem}", line, col, code="yaml.syntax", hint=hint)
    except YAMLError as exc:
        return _fail(doc, f"invalid YAML: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", 1, 1,
                     code="yaml.syntax")
    except RecursionError:
        return _fail(doc, f"invalid YAML: nesting is too deep (limit {MAX_DEPTH})", 1, 1, code="yaml.depth")
    except Exception as exc:  # ruamel raises assorted errors on hostile input; never let one escape
        return _fail(doc, f"invalid YAML: {type(exc).__name__}: {exc}", 1, 1, code="yaml.syntax")
    if tree is None:
        return _fail(doc, "file is empty", 1, 1, code="file.empty", hint="start from fleet.yaml.example")
    if not isinstance(tree, CommentedMap):
        kind = "a list" if isinstance(tree, CommentedSeq) else "a single value"
        line = next((i for i, ln in enumerate(text.splitlines(), 1) if ln.strip() and not ln.lstrip().startswith("#")), 1)
        return _fail(doc, f"the top level must be a mapping (version:, org:, tenants:, …), not {kind}", line, 1,
                     code="yaml.top-level")
    conv = _Converter()
    try:
        data = conv.convert(tree, ())
    except _TooBig as exc:
        line, col = conv.positions.of_key(exc.path[:1])  # the top-level entry whose expansion is too big
        return _fail(doc, f"document expands to more than {MAX_NODES} nodes or {MAX_EXPANDED_CHARS} characters "
                     "(an alias bomb?)", line, col, code="yaml.too-many-nodes", hint="use fewer anchors/aliases")
    except _Unsupported as exc:
        line, col = conv.positions.of_value(exc.path)
        return _fail(doc, str(exc), line, col, code="yaml.unsupported")
    except RecursionError:
        return _fail(doc, "document is nested too deeply", 1, 1, code="yaml.depth")
    conv.positions.values[()] = (1, 1)
    doc.tree, doc.data, doc.positions = tree, data, conv.positions
    return doc


def _duplicate_key_message(exc: MarkedYAMLError) -> str:
    problem = (exc.problem or "").strip()
    # ruamel: 'found duplicate key "mode" with value "x" (original value: "y")'
    if problem.startswith("found duplicate key"):
        return "duplicate key " + problem.split("duplicate key", 1)[1].split(" with value", 1)[0].strip()
    return "duplicate key"


def load_document(path: str | Path) -> LoadedDocument:
    """Read and parse one fleet.yaml; see the module docstring."""
    path = Path(path)
    doc = LoadedDocument(file=str(path))
    text = read_text(path, doc)
    if text is None:
        return doc
    return parse_text(text, doc)


def load_text(text: str, file: str = "<string>") -> LoadedDocument:
    """Parse YAML given as text (tests, stdin)."""
    return parse_text(text, LoadedDocument(file=file))
