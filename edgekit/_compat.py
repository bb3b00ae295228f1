"""Python 3.10 shims: JetPack 6 (Jetson Orin) ships Python 3.10, and its users run edgekit there.

Everything else in the package is plain 3.10; these are the 3.11 additions it uses."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from enum import StrEnum

    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    from enum import Enum

    import tomli as tomllib

    class StrEnum(str, Enum):
        """enum.StrEnum of 3.11: members are strings, and str() is the value."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)

__all__ = ["StrEnum", "tomllib"]
