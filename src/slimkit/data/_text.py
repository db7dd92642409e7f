"""Real English sentences from documentation that ships with Python and installed packages.

Transformer measurements need real text (a model's fidelity on random tokens says little), and
nothing may be downloaded: the docstrings of the standard library and the long descriptions in
installed packages' metadata are English prose, present wherever slimkit itself is installed.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
from collections.abc import Iterator
from importlib import metadata

from slimkit.errors import DataError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MARKUP = re.compile(r"[`*_#<>|\[\]{}=\\]|https?://\S+")


def text_samples(n: int = 512, seed: int = 0, min_words: int = 6, max_words: int = 60) -> list[str]:
    """``n`` distinct English sentences from installed packages' descriptions, in a fixed order.

    Raises:
        DataError: fewer than ``n`` sentences were found.

    Example:
        >>> sentences = text_samples(20)
        >>> len(sentences), all(s[0].isupper() for s in sentences)
        (20, True)
    """
    found: set[str] = set()
    for body in _documents():
        for sentence in _SENTENCE_END.split(body):
            clean = " ".join(sentence.split())
            if _is_prose(clean, min_words, max_words):
                found.add(clean)
    if len(found) < n:
        raise DataError(f"only {len(found)} sentences found in installed packages; asked for {n}.")
    ordered = sorted(found)
    random.Random(seed).shuffle(ordered)
    return ordered[:n]


_STDLIB = (
    "argparse", "asyncio", "collections", "concurrent.futures", "configparser", "contextlib",
    "csv", "dataclasses", "datetime", "decimal", "email.message", "functools", "http.client",
    "http.server", "inspect", "io", "ipaddress", "itertools", "json", "logging", "multiprocessing",
    "os", "pathlib", "pickle", "random", "re", "shutil", "socket", "sqlite3", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest",
    "urllib.request", "uuid", "zipfile",
)  # fmt: skip


def _documents() -> Iterator[str]:
    for name in _STDLIB:
        module = importlib.import_module(name)
        yield inspect.getdoc(module) or ""
        for _, obj in sorted(vars(module).items()):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == name:
                yield inspect.getdoc(obj) or ""
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        yield dist.metadata.get_payload() or dist.metadata.get("Description") or ""


def _is_prose(text: str, min_words: int, max_words: int) -> bool:
    words = text.split()
    if not (min_words <= len(words) <= max_words) or _MARKUP.search(text):
        return False
    letters = sum(c.isalpha() for c in text)
    return text[0].isupper() and text[-1] in ".!?" and letters > 0.75 * len(text.replace(" ", ""))
