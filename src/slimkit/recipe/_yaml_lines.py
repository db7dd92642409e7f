"""Parse YAML and remember the line of every value, so that errors can point at it."""

from __future__ import annotations

from typing import Any

import yaml

from slimkit.errors import RecipeError

DocPath = tuple[Any, ...]
"""A location in the document: mapping keys and list indices, as in ``("steps", 1, "train")``."""

Lines = dict[DocPath, int]
"""Each path in a document -> its 1-based line."""


def parse(text: str, where: str) -> tuple[Any, Lines]:
    """The document's data and a map from each path in it to its 1-based line.

    A mapping entry's line is its key's line; a list item's line is the item's first line.

    Raises:
        RecipeError: the YAML is malformed or repeats a key, with the line.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise RecipeError(_yaml_message(exc, where)) from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{where}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    lines: Lines = {}
    if node is not None:
        _walk(node, (), node.start_mark.line + 1, lines, where)
    return data, lines


def line_of(path: DocPath, lines: Lines) -> int | None:
    """The line of ``path``, or of its longest prefix in the document (for a missing field)."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def format_path(path: DocPath) -> str:
    """``("steps", 1, "train", "lr")`` as ``steps[1].train.lr``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _walk(node: yaml.Node, path: DocPath, line: int, lines: Lines, where: str) -> None:
    lines[path] = line
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), item.start_mark.line + 1, lines, where)
    elif isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = _key(key_node)
            key_line = key_node.start_mark.line + 1
            if key in seen:
                # PyYAML silently keeps the last value; a repeated key is almost always a mistake.
                raise RecipeError(f"{where}:{key_line}: {format_path((*path, key))}: repeated key")
            seen.add(key)
            _walk(value_node, (*path, key), key_line, lines, where)


def _key(node: yaml.Node) -> Any:
    # Keys are plain scalars in recipes; anything else only needs a stable, printable stand-in.
    return node.value if isinstance(node, yaml.ScalarNode) else repr(node.value)


def _yaml_message(exc: yaml.MarkedYAMLError, where: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    line = f":{mark.line + 1}" if mark is not None else ""
    problem = exc.problem or exc.context or "malformed YAML"
    context = ""
    if exc.context and exc.problem and exc.context_mark is not None:
        context = f" ({exc.context} started on line {exc.context_mark.line + 1})"
    return f"{where}{line}: invalid YAML: {problem}{context}"
