"""YAML loading for manifests: fast, bounded, strict, and able to tell on which line a
field stands, for error messages.

libyaml (PyYAML's C parser) reads the text into events; :class:`_Builder` turns them into
Python values in one pass, without PyYAML's node tree and generic constructor (four times
slower on a 100k-device fleet). The same pass refuses what a manifest must not hold:

- alias "bombs": a few hundred bytes whose aliases expand into billions of values. Aliases
  are shared, not copied, so loading one is quick; every later walk of the data (validation,
  JSON encoding) would expand it. The builder counts the values the data holds once
  expanded and refuses a document whose aliases add more than :data:`ALIAS_ALLOWANCE`
  values, or as many values as the file writes out, whichever is more;
- aliases that contain themselves, and aliases to no anchor;
- a key given twice in a mapping, or two keys that are the same once written as text
  (``1`` and ``"1"``, ``true`` and ``"true"``): YAML loaders silently keep the last one;
- scalars no Python value can hold (``2024-02-30``, a 5000-digit integer).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import ScalarNode

from campaignctl.errors import InputError
from campaignctl.values import cut, decode_utf8

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Aliases may add this many values to a document beyond what it writes out (or as many as it
# writes out, for large documents): plenty for sharing tags among devices, nothing like a bomb.
ALIAS_ALLOWANCE = 100_000

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_TIMESTAMP, _BINARY, _MAP, _SEQ, _MERGE = (_TAG + t for t in ("timestamp", "binary", "map", "seq", "merge"))
_BOOLS = SafeConstructor.bool_values
_RESOLVERS = _Loader.yaml_implicit_resolvers  # first character -> [(tag, pattern)]
# Plain scalars starting with any other character are text: no pattern to try.
_MAYBE_NOT_TEXT = None if None in _RESOLVERS else frozenset(_RESOLVERS) | {""}
_NO_KEY = object()  # a mapping waiting for its next key
_BUILDING = object()  # an anchor whose collection is not finished: an alias to it is a cycle


class YamlError(Exception):
    """A problem at ``path`` (keys as written, list indexes), on ``line`` (1-based)."""

    def __init__(self, message: str, path: list[str | int], line: int) -> None:
        super().__init__(message)
        self.message, self.path, self.line = message, path, line


class _Frame:
    """A collection being built."""

    __slots__ = ("anchor", "is_map", "key", "key_text", "line", "merges", "seen", "size", "value", "written")

    def __init__(self, value: Any, anchor: str | None, line: int) -> None:
        self.value, self.anchor, self.line = value, anchor, line
        self.is_map = type(value) is dict
        self.key: Any = _NO_KEY
        self.key_text: Any = None
        # Each key by its text (and non-text keys by value too: 1, 1.0 and true are one
        # Python key), with where it stands, for "given twice".
        self.seen: dict[Any, tuple[Any, Any]] = {}
        self.size = self.written = 1  # values once expanded / values written out, itself included
        self.merges: list[Any] = []


class _Builder:
    """Python values from libyaml's events (see the module's docstring)."""

    def __init__(self, text: str) -> None:
        self._parser = _Loader(text)
        self._safe = SafeConstructor()  # for the rare scalars: 0x1F, 1_000, .inf, !!binary...
        self._plain: dict[str, Any] = {}  # plain scalar text -> value (values repeat; all are immutable)
        self._anchors: dict[str, tuple[Any, int, int]] = {}  # anchor -> (value, size, written)
        self._stack: list[_Frame] = []
        self._culprit: tuple[str, list[str | int], int] | None = None  # first value past ALIAS_ALLOWANCE

    def document(self) -> Any:
        try:
            return self._document()
        finally:
            self._parser.dispose()

    def _document(self) -> Any:
        get = self._parser.get_event
        event = get()
        if type(event) is StreamStartEvent:
            event = get()
        if type(event) is StreamEndEvent:
            return None
        value = None
        root: tuple[Any, int, int] | None = None
        if type(event) is DocumentStartEvent:
            root = self._value(get)
            value = root[0]
            event = get()  # DocumentEndEvent
            event = get()
        if type(event) is not StreamEndEvent:
            raise YamlError(
                "invalid YAML: expected a single document in the stream, but found another",
                [],
                event.start_mark.line + 1,
            )
        if root is not None:
            _, size, written = root
            allowance = max(ALIAS_ALLOWANCE, written)
            if size - written > allowance:
                what, path, line = self._culprit or ("the document", [], 1)
                raise YamlError(
                    f"aliases expand {what} to more values than allowed (the document would hold "
                    f"{size:,} values; aliases may add {allowance:,}): an alias bomb?",
                    path,
                    line,
                )
        return value

    def _value(self, get: Any) -> tuple[Any, int, int]:
        """Build the next value: (value, values once expanded, values written out)."""
        stack = self._stack
        plain = self._plain
        maybe_not_text = _MAYBE_NOT_TEXT
        done: tuple[Any, int, int]
        while True:
            event = get()
            kind = type(event)
            if kind is ScalarEvent:
                if stack and event.anchor is None and event.tag is None:
                    # The fast path of large files: untagged scalars that are text, or were
                    # read before, as a key not seen yet or as a value.
                    frame = stack[-1]
                    text = event.value
                    if not event.implicit[0] or (maybe_not_text is not None and text[:1] not in maybe_not_text):
                        value = text
                    else:
                        value = plain.get(text, _NO_KEY)
                    if value is not _NO_KEY:
                        if not frame.is_map:
                            frame.value.append(value)
                        elif frame.key is _NO_KEY:
                            if type(value) is not str or value in frame.seen:
                                self._key_value(frame, value, event)
                                continue
                            frame.key = frame.key_text = value
                            frame.seen[value] = (value, event.start_mark)
                        elif frame.key is not _MERGE:
                            frame.value[frame.key] = value
                            frame.key = _NO_KEY
                        else:
                            frame.merges.append(value)
                            frame.key = _NO_KEY
                        frame.size += 1
                        frame.written += 1
                        continue
                if stack and stack[-1].is_map and stack[-1].key is _NO_KEY:
                    self._key(stack[-1], event)
                    continue
                done = (self._scalar(event), 1, 1)
                if event.anchor is not None:
                    self._anchors[event.anchor] = done
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                mapping = kind is MappingStartEvent
                if stack and stack[-1].is_map and stack[-1].key is _NO_KEY:
                    raise self._error("a mapping key must be a scalar (text, number...), not a list or mapping", event)
                if event.tag is not None and event.tag != "!" and event.tag != (_MAP if mapping else _SEQ):
                    # Tags and anchors are the file's text, of any length: quoted cut short.
                    raise self._error(
                        f"the YAML tag {cut(event.tag, 40)} is not supported here (values are JSON)", event
                    )
                if event.anchor is not None:
                    self._anchors[event.anchor] = (_BUILDING, 0, 0)
                stack.append(_Frame({} if mapping else [], event.anchor, event.start_mark.line + 1))
                continue
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                done = self._end(stack.pop())
            elif kind is AliasEvent:
                done = self._anchors.get(event.anchor)  # type: ignore[assignment]
                if done is None:
                    raise self._error(f"invalid YAML: found undefined alias {cut(event.anchor, 40)!r}", event)
                if done[0] is _BUILDING:
                    raise self._error("invalid YAML: an alias refers to itself (the value would be infinite)", event)
                if stack and stack[-1].is_map and stack[-1].key is _NO_KEY:
                    self._key_value(stack[-1], done[0], event)
                    continue
                done = (done[0], done[1], 1)
            else:
                raise self._error(f"unexpected {kind.__name__}", event)
            if not stack:
                return done
            self._add(stack[-1], done)

    def _add(self, frame: _Frame, done: tuple[Any, int, int]) -> None:
        value, size, written = done
        frame.size += size
        frame.written += written
        if not frame.is_map:
            frame.value.append(value)
            return
        if frame.key is _MERGE:
            frame.merges.append(value)
        else:
            frame.value[frame.key] = value
        frame.key = _NO_KEY

    def _key(self, frame: _Frame, event: ScalarEvent) -> None:
        if event.tag is None and event.implicit[0] and event.value == "<<":
            frame.key = _MERGE
            return
        self._key_value(frame, self._scalar(event), event)
        if event.anchor is not None:
            self._anchors[event.anchor] = (frame.key, 1, 1)

    def _key_value(self, frame: _Frame, key: Any, event: Any) -> None:
        if type(key) is str:
            text = key
        elif type(key) in (list, dict):
            raise self._error("a mapping key must be a scalar (text, number...), not a list or mapping", event)
        else:
            text = _key_text(key)
        frame.key, frame.key_text = key, text
        seen = frame.seen
        prior = seen.get(text)
        if prior is None and text is not key:
            prior = seen.get((None, key))
        if prior is not None:
            raise self._error(_twice(text, prior, (key, event.start_mark)), event)
        seen[text] = (key, event.start_mark)
        if text is not key:
            seen[(None, key)] = seen[text]
        frame.size += 1
        frame.written += 1

    def _end(self, frame: _Frame) -> tuple[Any, int, int]:
        value = frame.value
        if frame.merges:
            # `<<: *defaults`: the mapping's own keys win, then the merged mappings in order.
            sources = [item for source in frame.merges for item in (source if type(source) is list else [source])]
            base: dict[Any, Any] = {}
            for item in reversed(sources):
                if type(item) is not dict:
                    raise YamlError("a merge key (<<) takes a mapping or a list of mappings", self._path(), frame.line)
                base.update(item)
            base.update(value)
            frame.value = value = base
        done = (value, frame.size, frame.written)
        if frame.anchor is not None:
            self._anchors[frame.anchor] = done
        if self._culprit is None and frame.size - frame.written > ALIAS_ALLOWANCE:
            path = self._path()
            self._culprit = (format_path(path) or "the document", path, frame.line)
        return done

    def _path(self) -> list[str | int]:
        """Where the value being built stands: keys as written, list indexes."""
        path: list[str | int] = []
        for frame in self._stack:
            if frame.is_map:
                if frame.key is not _NO_KEY:
                    path.append("<<" if frame.key is _MERGE else frame.key_text)
            else:
                path.append(len(frame.value))
        return path

    def _error(self, message: str, event: Any) -> YamlError:
        return YamlError(message, self._path(), event.start_mark.line + 1)

    def _scalar(self, event: ScalarEvent) -> Any:
        tag, text = event.tag, event.value
        if tag is None or tag == "!":
            if not event.implicit[0]:
                return text  # quoted, or a block scalar
            value = self._plain.get(text, _NO_KEY)
            if value is _NO_KEY:
                value = self._plain[text] = self._construct(_resolve(text), text, event)
            return value
        return self._construct(tag, text, event)

    def _construct(self, tag: str, text: str, event: Any) -> Any:
        try:
            if tag == _STR:
                return text
            if tag == _NULL:
                return None
            if tag == _BOOL:
                return _BOOLS[text.lower()]
            node = ScalarNode(tag, text)
            if tag == _INT:
                # Plain decimal digits the fast way; YAML 1.1 reads a leading 0 as octal.
                fast = text.isdigit() and (len(text) == 1 or text[0] != "0")
                return int(text) if fast else self._safe.construct_yaml_int(node)
            if tag == _FLOAT:
                return self._safe.construct_yaml_float(node)
            if tag == _TIMESTAMP:
                return self._safe.construct_yaml_timestamp(node)
            if tag == _BINARY:
                return self._safe.construct_yaml_binary(node)
        except (ValueError, OverflowError, KeyError, AttributeError, TypeError, yaml.YAMLError) as exc:
            raise self._error(_scalar_problem(tag, text, exc), event) from None
        raise self._error(f"the YAML tag {cut(tag, 40)} is not supported here (values are JSON)", event)


def _resolve(text: str) -> str:
    """The tag of a plain scalar, as PyYAML's resolver gives it."""
    for tag, pattern in _RESOLVERS.get(text[:1] if text else "", ()):
        if pattern.match(text):
            return tag
    for tag, pattern in _RESOLVERS.get(None, ()):
        if pattern.match(text):
            return tag
    return _STR


def _key_text(key: Any) -> Any:
    """``key`` as it reads once written as text, as in JSON (true, null) and in Python."""
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)  # only called for keys that are not text


def _twice(text: str, first: tuple[Any, Any], second: tuple[Any, Any]) -> str:
    """Why two keys of a mapping are one: ``first`` and ``second`` are (key, libyaml's mark)."""
    (key1, mark1), (key2, mark2) = first, second
    line1, line2 = mark1.line + 1, mark2.line + 1
    text = cut(text, 40)  # a key may be any length
    if type(key1) is type(key2) and key1 == key2:
        return f"key {text!r} is given twice (lines {line1} and {line2})"
    return (
        f"key {text!r} is given twice: as {_spelling(key1)} on line {line1} and as {_spelling(key2)} "
        f"on line {line2} (the same key once written as text)"
    )


def _spelling(key: Any) -> str:
    return repr(key) if isinstance(key, str) else f"{_key_text(key)} ({type(key).__name__})"


def _scalar_problem(tag: str, text: str, exc: BaseException) -> str:
    shown = cut(text, 40)
    kind = {_TIMESTAMP: "date", _INT: "integer", _BOOL: "boolean"}.get(tag, tag.removeprefix(_TAG))
    reason = str(exc)
    if "Exceeds the limit" in reason:
        reason = f"{len(text)} digits is too many"
    elif "offset" in reason:
        reason = "a UTC offset is less than 24 hours"
    elif not isinstance(exc, (ValueError, OverflowError)) or len(reason) > 80:
        reason = ""
    return f"{shown!r} is not a valid {kind}{f' ({reason})' if reason else ''}; quote it if it is text"


@contextmanager
def gc_paused() -> Iterator[None]:
    """Building a million objects triggers the cycle collector over and over, each time
    over everything built so far: that was most of the time of a large load. Nothing
    built while reading a manifest (or importing it) is garbage until it ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class YamlDocument:
    def __init__(self, text: str, source: str) -> None:
        self.text, self.source = text, source
        try:
            with gc_paused():
                self.data: Any = _Builder(text).document()
        except YamlError as exc:
            raise InputError(exc.message, source=source, field=format_path(exc.path) or None, line=exc.line) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = " ".join(p for p in (exc.context, exc.problem) if p)
            raise InputError(f"invalid YAML: {problem}", source=source, line=mark.line + 1 if mark else None) from None
        except yaml.YAMLError as exc:
            raise InputError(f"invalid YAML: {exc}", source=source) from None
        except RecursionError:
            raise InputError("invalid YAML: the nesting is too deep", source=source) from None

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """1-based line of the deepest node of ``path`` that exists in the document."""
        # Read again, only for an error: as events, which stop at the node and hold no tree
        # (an error about the last device of a 100k-device file costs no memory).
        parser = _Loader(self.text)
        try:
            return _line_of(parser.get_event, path)
        except yaml.YAMLError:
            return None
        finally:
            parser.dispose()

    def error(self, message: str, path: Sequence[str | int]) -> InputError:
        return InputError(message, source=self.source, field=format_path(path) or None, line=self.line_of(path))


def _line_of(get: Any, path: Sequence[str | int]) -> int | None:
    event = get()
    if type(event) is StreamStartEvent:
        event = get()
    if type(event) is not DocumentStartEvent:
        return None
    event = get()
    line = event.start_mark.line + 1
    for part in path:
        if type(event) is MappingStartEvent:
            while True:
                key = get()
                if type(key) is MappingEndEvent:
                    return line
                if type(key) is ScalarEvent and key.value == part:
                    line, event = key.start_mark.line + 1, get()
                    break
                _skip(get, key)
                _skip(get, get())
        elif type(event) is SequenceStartEvent and isinstance(part, int):
            for _ in range(part):
                item = get()
                if type(item) is SequenceEndEvent:
                    return line
                _skip(get, item)
            event = get()
            if type(event) is SequenceEndEvent:
                return line
            line = event.start_mark.line + 1
        else:
            return line
    return line


def _skip(get: Any, event: Any) -> None:
    """Read past the value that starts with ``event``."""
    depth = 1 if type(event) in (MappingStartEvent, SequenceStartEvent) else 0
    while depth:
        kind = type(get())
        if kind is MappingStartEvent or kind is SequenceStartEvent:
            depth += 1
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            depth -= 1


def format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def read_text(path: str) -> str:
    """The text of file ``path`` (``-``: stdin), read as bytes and decoded here, so that
    bytes that are not UTF-8 are one error naming where, whatever the locale."""
    if path == "-":
        import sys

        return decode_utf8(sys.stdin.buffer.read(), source=path, bom=True)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError("no such file", source=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a file", source=path) from None
    except OSError as exc:
        raise InputError(exc.strerror or str(exc), source=path) from None
    return decode_utf8(data, source=path, bom=True)
