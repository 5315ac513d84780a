"""Layered settings, the part both programs share (DESIGN 6): a TOML file, then `XPU_<GROUP>_<KEY>`
environment variables on top. Each program's config module turns the result into its typed
Structs and its own ConfigError; flags are applied by the CLIs.
"""

from __future__ import annotations

import pathlib
import tomllib
from collections.abc import Iterable, Mapping


class SettingsError(ValueError):
    """The file cannot be read or is not TOML; names where and what."""

    def __init__(self, where: str, problem: str) -> None:
        """Keep the facts; build the message."""
        super().__init__(f"config {where}: {problem}")
        self.where, self.problem = where, problem


def env_value(text: str) -> object:
    """An environment value as TOML would give it: a number or boolean when it reads as one."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def layered(
    path: str | pathlib.Path | None, environ: Mapping[str, str] | None, groups: Iterable[str]
) -> tuple[dict[str, dict[str, object]], str]:
    """The file's tables (none without `path`) with `XPU_<GROUP>_<KEY>` of `groups` on top, and
    where they came from (the file, then each variable used), for error messages.

    Raises:
        SettingsError: an unreadable file, or not valid TOML.
    """
    raw: dict[str, dict[str, object]] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            raw = tomllib.loads(pathlib.Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(where, f"cannot read it: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise SettingsError(where, f"not UTF-8 text (byte {exc.start}); TOML files are UTF-8") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(where, f"not valid TOML: {exc}") from exc
        except RecursionError as exc:
            raise SettingsError(where, "nested too deeply to be a config (arrays or tables in tables ...)") from exc
    wanted = set(groups)
    for key, value in sorted((environ or {}).items()):
        group, _, field = key.removeprefix("XPU_").lower().partition("_")
        if key.startswith("XPU_") and group in wanted and field:
            table = raw.setdefault(group, {})
            if isinstance(table, dict):
                table[field] = env_value(value)
                where = f"{where} + environment ({key})"
    return raw, where
