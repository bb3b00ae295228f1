"""Typed errors. Library code raises these; the CLI turns them into one line and exit code 1.

Every error carries *what* is wrong (message) and, where we know it, *how to fix it* (hint),
so the CLI line reads: ``error: <message> -- <hint>``.
"""

from __future__ import annotations

from collections.abc import Iterable


class EdgekitError(Exception):
    """Base class for every error edgekit raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} -- {self.hint}"
        return " ".join(text.split())  # never more than one line on the terminal

    def __str__(self) -> str:
        return self.one_line()


class InputError(EdgekitError):
    """The user gave us something we cannot use (path, option, file contents)."""


class ModelNotFoundError(InputError):
    pass


class UnsupportedArchitectureError(InputError):
    def __init__(self, arch: str, supported: Iterable[str]) -> None:
        names = ", ".join(sorted(supported))
        super().__init__(
            f"unsupported architecture {arch!r}",
            hint=f"supported: {names}",
        )
        self.arch = arch


class UnknownChoiceError(InputError):
    """A value outside a closed set (quant type, format, device...)."""

    def __init__(self, kind: str, value: str, valid: Iterable[str]) -> None:
        super().__init__(f"unknown {kind} {value!r}", hint=f"valid: {', '.join(valid)}")
        self.value = value


class CorruptFileError(InputError):
    def __init__(self, path: object, problem: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"{path}: {problem}",
            hint=hint or "the file is corrupt or truncated; re-download or re-save it",
        )


class AdapterMismatchError(InputError):
    pass


class OutputError(EdgekitError):
    """We could not write the result (permissions, disk full)."""


class VerificationError(EdgekitError):
    """An artifact does not behave like its source model."""

    def __init__(self, artifact: str, check: str, detail: str) -> None:
        super().__init__(
            f"verification failed for {artifact}: {detail}",
            hint="the artifact was not kept; to keep it anyway (not recommended) pass --no-verify / verify=False",
        )
        self.artifact = artifact
        self.check = check


class VocabularyMismatchError(InputError):
    """An artifact's logits cover another vocabulary than its reference's: built from another model."""

    def __init__(self, reference_vocab: int, artifact_vocab: int) -> None:
        super().__init__(
            f"the artifact has a vocabulary of {artifact_vocab} tokens, its reference {reference_vocab}",
            hint="the artifact was built from another model: compare it with the model it was converted from "
                 "(--reference / reference=)",
        )
        self.reference_vocab = reference_vocab
        self.artifact_vocab = artifact_vocab


class QualityGateError(EdgekitError):
    """A correct artifact loses more quality than the user allowed (--max-kl, --max-ppl-increase)."""

    def __init__(self, artifact: str, reasons: list[str], verification: dict[str, object]) -> None:
        super().__init__(f"{artifact} refused by the quality gate: {'; '.join(reasons)}",
                         hint="it was not written; raise the limit (--max-kl / max_kl, --max-ppl-increase / "
                              "max_ppl_increase) or pick a higher-bit type")
        self.artifact = artifact
        self.reasons = reasons
        self.verification = verification


class RuntimeLoadError(EdgekitError):
    """A runtime could not load or run an artifact."""


class DependencyError(EdgekitError):
    """An optional dependency needed for this operation is missing."""

    def __init__(self, package: str, purpose: str, install: str) -> None:
        super().__init__(f"{package} is needed for {purpose} but is not installed", hint=f"install it: {install}")
