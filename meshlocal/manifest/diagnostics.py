"""Collected errors and notes, so `meshlocal validate` can list them all."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshlocal.errors import Location, ManifestError


@dataclass(frozen=True)
class Note:
    """Something worth telling that is not an error (not emulated, skipped, unknown)."""

    kind: str  # "not-emulated" | "skipped" | "warning" | "left-out" (a broken, unnamed service)
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

    def __init__(
        self,
        errors: list[ManifestError],
        *,
        suggest_validate: bool = True,
        footer: str | None = None,
    ) -> None:
        self.errors = sorted(errors, key=_sort_key)
        self.suggest_validate = suggest_validate
        self.footer = footer  # a closing line, e.g. how to run the services that load
        first = self.errors[0]
        super().__init__(first.message, location=first.location, hint=first.hint)

    def render(self) -> str:
        body = "\n".join(e.render() for e in self.errors)
        count = f"{len(self.errors)} error" + ("s" if len(self.errors) != 1 else "")
        tail = "; `meshlocal validate` lists them with notes" if self.suggest_validate else ""
        footer = f"\n  hint: {self.footer}" if self.footer else ""
        return f"{body}\n{count}{tail}{footer}"
