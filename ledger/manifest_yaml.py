"""A safe YAML/JSON loader for manifests (SPEC §12 limits).

``yaml.safe_load`` alone is not safe against hostile input: it keeps the last of two
equal keys, expands an alias bomb into exponential work for whatever walks the result,
and recurses once per nesting level. This loader parses with libyaml (the pure-Python
parser when libyaml is missing) and checks the *node graph* before anything is
constructed:

- the file is UTF-8 (a UTF-8 byte-order mark is allowed) and at most ``MAX_FILE_BYTES``;
- no mapping holds the same key twice;
- a document uses at most ``MAX_ALIASES`` aliases and expands to at most
  ``MAX_EXPANDED_NODES`` nodes (counted with memoisation, so a bomb is refused in
  time linear in its *written* size); a recursive alias is refused;
- a document nests at most ``MAX_DOCUMENT_DEPTH`` levels; ``spec.template`` at most
  ``MAX_TEMPLATE_DEPTH`` levels and ``MAX_TEMPLATE_BYTES`` of scalar text;
- no string holds a NUL or another control character (tab, newline and carriage
  return are allowed inside values).

Every refusal is a ``ManifestError`` naming the field (or the line) and the rule.
The walks are iterative: no input can exhaust the Python stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from ledger.errors import ManifestError
from ledger.limits import CONTROL

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_TEMPLATE_BYTES = 256 * 1024
MAX_TEMPLATE_DEPTH = 64
#: the manifest's own structure (document -> spec -> template) plus the template's depth
MAX_DOCUMENT_DEPTH = MAX_TEMPLATE_DEPTH + 8
MAX_ALIASES = 1000
MAX_EXPANDED_NODES = 1_000_000

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE = "tag:yaml.org,2002:merge"


def decode(data: bytes, source: str = "") -> str:
    """The text of a manifest file: at most ``MAX_FILE_BYTES``, UTF-8, no NUL."""
    if len(data) > MAX_FILE_BYTES:
        raise ManifestError("(file)", f"is larger than the limit of {MAX_FILE_BYTES} bytes (10 MiB)", source)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ManifestError("(file)", "must be UTF-8 (found a UTF-16 byte-order mark)", source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError("(file)", f"must be UTF-8 (invalid byte at offset {exc.start})", source) from None
    return text


def _check_text(text: str, source: str) -> None:
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise ManifestError("(file)", f"is larger than the limit of {MAX_FILE_BYTES} bytes (10 MiB)", source)
    match = CONTROL.search(text)
    if match:
        line = text.count("\n", 0, match.start()) + 1
        raise ManifestError(f"line {line}", f"control character U+{ord(match.group()):04X} is not allowed", source)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError("(file)", "must be UTF-8 (holds a lone surrogate)", source) from None


def _yaml_error(exc: yaml.YAMLError, source: str) -> ManifestError:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}" if mark is not None else "(document)"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return ManifestError(where, f"malformed YAML: {problem}", source)


def load_all(text: str, source: str = "") -> list[Any]:
    """Every document of ``text`` (empty documents dropped), checked as the module says."""
    _check_text(text, source)
    loader = _Loader(text)
    docs: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _check_graph(node, source)
            value = loader.construct_document(node)
            _check_strings(value, source)
            if value is not None:
                docs.append(value)
    except yaml.YAMLError as exc:
        if "nesting depth" in str(getattr(exc, "problem", "")):
            raise _too_deep(text, source) from None
        raise _yaml_error(exc, source) from None
    except RecursionError:  # belt and braces: the graph check bounds depth first
        raise ManifestError("(document)", f"nested deeper than {MAX_DOCUMENT_DEPTH} levels", source) from None
    finally:
        loader.dispose()
    return docs


def _too_deep(text: str, source: str) -> ManifestError:
    """libyaml stopped at its own nesting limit (1000): find which field went that deep."""
    frames: list[list[Any]] = []  # [is_mapping, expecting_key, label]
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.ScalarEvent | yaml.AliasEvent | yaml.MappingStartEvent | yaml.SequenceStartEvent):
                top = frames[-1] if frames else None
                if top is not None and top[0] and top[1]:
                    top[2] = event.value if isinstance(event, yaml.ScalarEvent) else "(key)"
                    top[1] = False
                    if not isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
                        frames.append([isinstance(event, yaml.MappingStartEvent), True, ""])
                    continue
                if top is not None and top[0]:
                    top[1] = True
                elif top is not None:
                    top[2] = int(top[2] or 0) + 1
                if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                    frames.append([isinstance(event, yaml.MappingStartEvent), True, ""])
                    if len(frames) > MAX_DOCUMENT_DEPTH:
                        break
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent) and frames:
                frames.pop()
    except yaml.YAMLError:
        pass
    labels = [str(frame[2]) for frame in frames[:2] if frame[0]]
    if labels == ["spec", "template"]:
        return ManifestError("spec.template", f"is nested deeper than {MAX_TEMPLATE_DEPTH} levels", source)
    where = ".".join(labels) or "(document)"
    return ManifestError(where, f"is nested deeper than {MAX_DOCUMENT_DEPTH} levels", source)


# ---------------------------------------------------------------- the node graph


def _key_text(node: yaml.Node) -> str | None:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_graph(root: yaml.Node, source: str) -> None:
    """Duplicate keys, aliases, depth and the template's limits, before construction."""
    _check_keys(root, source)
    sizes = _expanded_sizes(root, source)
    if sizes[id(root)][2] > MAX_DOCUMENT_DEPTH:
        raise ManifestError("(document)", f"is nested deeper than {MAX_DOCUMENT_DEPTH} levels", source)
    template = _template_node(root)
    if template is not None:
        _count, chars, height = sizes[id(template)]
        if height > MAX_TEMPLATE_DEPTH:
            raise ManifestError("spec.template", f"is nested deeper than {MAX_TEMPLATE_DEPTH} levels", source)
        if chars > MAX_TEMPLATE_BYTES:
            raise ManifestError(
                "spec.template", f"is larger than the limit of {MAX_TEMPLATE_BYTES} bytes (256 KiB)", source
            )


def _check_keys(root: yaml.Node, source: str) -> None:
    """Walk each distinct node once: refuse duplicate keys, too many aliases, runaway nesting."""
    seen: set[int] = set()
    aliases = 0
    stack: list[tuple[yaml.Node, int, str]] = [(root, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if id(node) in seen:
            aliases += 1
            if aliases > MAX_ALIASES:
                raise ManifestError(path or "(document)", f"uses more than {MAX_ALIASES} YAML aliases", source)
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            continue
        if depth > MAX_DOCUMENT_DEPTH:
            raise ManifestError(path or "(document)", f"is nested deeper than {MAX_DOCUMENT_DEPTH} levels", source)
        if isinstance(node, yaml.SequenceNode):
            for index, child in enumerate(node.value):
                stack.append((child, depth + 1, f"{path}[{index}]"))
            continue
        keys: set[str] = set()
        for key, value in node.value:
            text = _key_text(key)
            label = text if text is not None else "(key)"
            child_path = f"{path}.{label}" if path else label
            if text is not None and key.tag != _MERGE:
                if text in keys:
                    raise ManifestError(child_path, "duplicate key (each key may appear once)", source)
                keys.add(text)
            stack.append((key, depth + 1, child_path))
            stack.append((value, depth + 1, child_path))


def _expanded_sizes(root: yaml.Node, source: str) -> dict[int, tuple[int, int, int]]:
    """(nodes, scalar characters, nesting height) of every node's full expansion.

    Memoised on node identity, so an alias bomb costs what it takes to write down;
    a recursive alias is refused.
    """
    sizes: dict[int, tuple[int, int, int]] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            if isinstance(node, yaml.ScalarNode):
                sizes[key] = (1, len(str(node.value)), 0)
                continue
            count, chars, height = 1, 0, 0
            for child in _children(node):
                c_count, c_chars, c_height = sizes[id(child)]
                count, chars, height = count + c_count, chars + c_chars, max(height, c_height)
            sizes[key] = (count, chars, height + 1)
            if count > MAX_EXPANDED_NODES:
                raise ManifestError(
                    "(document)", f"expands to more than {MAX_EXPANDED_NODES} nodes (YAML aliases are bounded)", source
                )
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ManifestError("(document)", "holds a recursive YAML alias", source)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes


def _get(node: yaml.Node, name: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if _key_text(key) == name and isinstance(value, yaml.Node):
                return value
    return None


def _template_node(root: yaml.Node) -> yaml.Node | None:
    spec = _get(root, "spec")
    return None if spec is None else _get(spec, "template")


# ---------------------------------------------------------------- constructed values


def walk_strings(value: Any) -> Iterator[tuple[str, str]]:
    """(path, text) of every string key and value in ``value``, iteratively."""
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            yield path or "(document)", item
        elif isinstance(item, dict | list):
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, dict):
                for key, child in item.items():
                    label = str(key)
                    child_path = f"{path}.{label}" if path else label
                    if isinstance(key, str):
                        yield child_path, key
                    stack.append((child, child_path))
            else:
                stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))


def _check_strings(value: Any, source: str) -> None:
    """YAML escapes (``"\\0"``) can smuggle in what the raw-text check cannot see."""
    for path, text in walk_strings(value):
        match = CONTROL.search(text)
        if match:
            raise ManifestError(path, f"control character U+{ord(match.group()):04X} is not allowed", source)
