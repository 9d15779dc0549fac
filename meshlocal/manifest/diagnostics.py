"""Collected errors and notes, so `meshlocal validate` can list them all."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshlocal.errors import Location, ManifestError


@dataclass(frozen=True)
class Note:
    """Something worth telling that is not an error (not emulated, skipped, unknown)."""

    kind: str  # "not-emulated" | "skipped" | "warning"
    message: str
    location: Location | None = None

    def render(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}note: {self.message}"


@dataclass
class Diagnostics:
    errors: list[ManifestError] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def error(
        self,
        message: str,
        location: Location | None,
        hint: str | None = None,
        cls: type[ManifestError] = ManifestError,
    ) -> None:
        self.errors.append(cls(message, location=location, hint=hint))

    def add(self, error: ManifestError) -> None:
        self.errors.append(error)

    def note(self, kind: str, message: str, location: Location | None = None) -> None:
        self.notes.append(Note(kind, message, location))


def _sort_key(error: ManifestError) -> tuple[str, int, int]:
    loc = error.location
    if loc is None:
        return ("", 0, 0)
    return (str(loc.path), loc.line or 0, loc.column or 0)


class ManifestErrors(ManifestError):
    """Several manifest errors at once; renders every one of them."""

    def __init__(self, errors: list[ManifestError]) -> None:
        self.errors = sorted(errors, key=_sort_key)
        first = self.errors[0]
        super().__init__(first.message, location=first.location, hint=first.hint)

    def render(self) -> str:
        if len(self.errors) == 1:
            return self.errors[0].render()
        body = "\n".join(e.render() for e in self.errors)
        return f"{body}\n{len(self.errors)} errors; run `meshlocal validate` for the full report"
