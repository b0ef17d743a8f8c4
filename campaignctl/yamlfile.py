"""YAML loading that can tell on which line a field stands, for error messages."""

from __future__ import annotations

from typing import Any, Sequence

import yaml

from campaignctl.errors import InputError

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlDocument:
    def __init__(self, text: str, source: str) -> None:
        self.text, self.source = text, source
        try:
            self.data: Any = yaml.load(text, Loader=_Loader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = " ".join(p for p in (exc.context, exc.problem) if p)
            raise InputError(
                f"invalid YAML: {problem}", source=source, line=mark.line + 1 if mark else None
            ) from None
        except yaml.YAMLError as exc:
            raise InputError(f"invalid YAML: {exc}", source=source) from None
        except RecursionError:
            raise InputError("invalid YAML: an alias refers to itself, or the nesting is too deep",
                             source=source) from None

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """1-based line of the deepest node of ``path`` that exists in the document."""
        # Composing again is slower than loading, so it only happens for an error.
        try:
            node = yaml.compose(self.text, Loader=_Loader)
        except yaml.YAMLError:
            return None
        line = node.start_mark.line + 1 if node is not None else None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if key_node.value == part:
                        line, node = key_node.start_mark.line + 1, value_node
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def error(self, message: str, path: Sequence[str | int]) -> InputError:
        return InputError(message, source=self.source, field=format_path(path) or None, line=self.line_of(path))


def format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def read_text(path: str) -> str:
    if path == "-":
        import sys

        return sys.stdin.read().removeprefix("\ufeff")
    try:
        # utf-8-sig: files saved by spreadsheets start with a byte order mark.
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError("no such file", source=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a file", source=path) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=path) from None
    except OSError as exc:
        raise InputError(exc.strerror or str(exc), source=path) from None
