"""Container-name globs, compiled once per policy.

``fnmatch.fnmatchcase`` compiles each pattern on first use and keeps it in a process-wide
cache of up to 32,768 patterns that is never released. With policy-supplied patterns that
cache is both a cost paid during admission and memory an editor of policies can fill. A
:class:`ContainerGlobs` translates its patterns (with ``fnmatch.translate``, so the
semantics stay fnmatch's) into one regular expression when the policy is loaded; matching a
name is then one ``fullmatch``, and the compiled form lives exactly as long as the policy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fnmatch import translate
from typing import Final

__all__ = ["MAX_GLOBS", "MAX_GLOB_LENGTH", "ContainerGlobs"]

MAX_GLOBS: Final = 64
"""The most patterns a policy's ``containers`` may list (the CRD's ``maxItems``)."""
MAX_GLOB_LENGTH: Final = 128
"""The longest pattern (the CRD's ``maxLength``); container names are at most 63 characters."""


class ContainerGlobs:
    """Case-sensitive fnmatch patterns (``*``, ``?``, ``[abc]``); None matches every name."""

    __slots__ = ("_regex",)

    def __init__(self, patterns: Sequence[str] | None) -> None:
        if patterns is not None and (
            len(patterns) > MAX_GLOBS or any(len(p) > MAX_GLOB_LENGTH for p in patterns)
        ):
            raise ValueError(
                f"at most {MAX_GLOBS} patterns of at most {MAX_GLOB_LENGTH} characters"
            )
        self._regex: re.Pattern[str] | None = None
        if patterns is not None:
            # translate() yields "(?s:...)\Z", a whole-string match; an empty list matches nothing.
            alternatives = "|".join(translate(pattern) for pattern in patterns) or "(?!)"
            self._regex = re.compile(alternatives)

    def matches(self, name: str) -> bool:
        return self._regex is None or self._regex.match(name) is not None
