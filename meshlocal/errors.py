"""One flat exception hierarchy, in the style of httpcore.

Every error a user can cause derives from :class:`MeshlocalError` and carries
what went wrong, where (file:line when there is a file) and how to fix it.
The CLI maps these to a message and a non-zero exit status; anything else is
a bug in meshlocal and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshlocal.runtime.engine import ContainerInfo


@dataclass(frozen=True)
class Location:
    """A place in a file, 1-based, as editors and compilers print it."""

    path: Path
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        text = str(self.path)
        if self.line is not None:
            text += f":{self.line}"
            if self.column is not None:
                text += f":{self.column}"
        return text


class MeshlocalError(Exception):
    """Base of every error meshlocal reports to a user."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        location: Location | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint

    def render(self) -> str:
        """The user-facing text: `where: error: what` then `hint: how`."""
        head = (
            f"{self.location}: error: {self.message}" if self.location else f"error: {self.message}"
        )
        return f"{head}\n  hint: {self.hint}" if self.hint else head

    def __str__(self) -> str:
        return self.render()


class WorkspaceNotFound(MeshlocalError):
    """No copilot/ directory with a .workspace file was found."""


class ManifestError(MeshlocalError):
    """A manifest is malformed or breaks a Copilot rule."""


class DecodeError(ManifestError):
    """A value of the wrong shape: go-yaml fails decoding it, in any environment's block."""


class InterpolationError(ManifestError):
    """A ${VAR} in a manifest names a variable that is not set."""


class SecretNotFound(ManifestError):
    """A secret or from_cfn value has no local source."""


class EnvironmentNotFound(MeshlocalError):
    """--env names no environment, or it was left out and is ambiguous."""


class DockerUnavailable(MeshlocalError):
    """No Docker engine answers."""

    exit_code = 3


class ImageError(MeshlocalError):
    """An image could not be built or found."""


class PortInUse(MeshlocalError):
    """A port meshlocal needs is already taken."""


class RuntimeFailure(MeshlocalError):
    """Replicas did not become healthy, or the engine refused an operation."""


class DataPlaneError(MeshlocalError):
    """The DNS server or Service Connect proxy cannot start or be reached."""


class MeshNotRunning(MeshlocalError):
    """A command needs a running mesh and none is up for this workspace."""


class ServiceNotFound(MeshlocalError):
    """A command names a service the workspace and the running mesh don't have."""


class DataPlaneDown(MeshNotRunning):
    """Replicas of the environment run, but its data plane (DNS, proxy) does not.

    `containers` are the replicas seen on the engine by label, for `ps` to list.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        containers: tuple[ContainerInfo, ...] = (),
    ) -> None:
        super().__init__(message, hint=hint)
        self.containers = containers


class ReplicaNotFound(MeshlocalError):
    """`exec` names a replica (or a sidecar of it) the running service does not have."""


class CommandNotFound(MeshlocalError):
    """`exec` or `run` names a program the container's image does not have (no shell, too)."""


class FaultError(MeshlocalError):
    """A fault the mesh can't inject as asked: unknown service, bad value, wrong mode."""
