"""Service images: `docker build` of a manifest's image.build, offline and cancellable."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import docker
import docker.utils
import docker.utils.build

from meshlocal.errors import ImageError, Location
from meshlocal.manifest.model import BuildSpec
from meshlocal.runtime.imagebuild import (
    BuildCancel,
    Progress,
    _build_stream,
    _noop,
)


def declared_build_args(dockerfile: Path) -> set[str]:
    """The ARG names a Dockerfile declares (so meshlocal passes only those)."""
    names: set[str] = set()
    try:
        text = dockerfile.read_text(errors="replace")
    except OSError:
        return names
    for match in re.finditer(r"(?im)^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", text):
        names.add(match.group(1))
    return names


def build_service_image(
    client: docker.DockerClient,
    build: BuildSpec,
    tag: str,
    progress: Progress | None = None,
    *,
    default_args: dict[str, str] | None = None,
    location: Location | None = None,
    image_labels: dict[str, str] | None = None,
    cancel: BuildCancel | None = None,
) -> str:
    """`docker build` of image.build; returns the image id.

    `default_args` (e.g. BASE_IMAGE -> the local Python base) are passed for
    the ARGs the Dockerfile declares, unless the manifest sets them itself.
    Progress lines stream to `progress`; a failure raises ImageError with the
    last lines of the build log. `image_labels` cost one LABEL step (see
    labelled_dockerfile); `cancel` aborts the build from another thread.
    """
    if not build.dockerfile.is_file():
        raise ImageError(
            f"Dockerfile {build.dockerfile} does not exist",
            location=location,
            hint="image.build must name a Dockerfile relative to the workspace root",
        )
    if not build.context.is_dir():
        raise ImageError(f"build context {build.context} is not a directory", location=location)
    declared = declared_build_args(build.dockerfile)
    args = {k: v for k, v in (default_args or {}).items() if k in declared}
    args.update(build.args)
    text = build.dockerfile.read_text(errors="replace")
    if image_labels:
        text = labelled_dockerfile(text, image_labels, build.target)
    # The Dockerfile travels inside the context under its own name, as
    # docker-py sends one that lies outside the context.
    name = f".meshlocal.Dockerfile.{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    context = docker.utils.tar(
        str(build.context), exclude=dockerignore(build.context), dockerfile=(name, text)
    )
    with context:
        return _build_stream(
            client,
            tag,
            progress or _noop,
            fileobj=context,
            custom_context=True,
            dockerfile=name,
            buildargs=args,
            target=build.target,
            cache_from=list(build.cache_from) or None,
            what=f"image {tag}",
            location=location,
            cancel=cancel,
        )


def dockerignore(context: Path) -> list[str] | None:
    """The context's .dockerignore patterns, read as docker-py and the CLI read them."""
    try:
        lines = (context / ".dockerignore").read_text(errors="replace").splitlines()
    except OSError:
        return None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def context_files(build: BuildSpec) -> list[str]:
    """The context's files a build sends (.dockerignore applied), relative, sorted."""
    patterns = dockerignore(build.context) or []
    return sorted(
        docker.utils.build.exclude_paths(
            str(build.context), patterns, dockerfile=build.dockerfile.name
        )
    )


_FROM = re.compile(r"(?im)^[ \t]*FROM(?:[ \t]+--\S+)*[ \t]+\S+(?:[ \t]+AS[ \t]+(\S+))?[ \t]*$")
_ESCAPE = re.compile(r"(?i)^#[ \t]*escape[ \t]*=[ \t]*(\S)")


def labelled_dockerfile(text: str, image_labels: dict[str, str], target: str | None) -> str:
    """`text` with one LABEL instruction for all of `image_labels`, in the stage built.

    The legacy builder turns the build API's `labels` into a LABEL step per
    label; one line makes one step. It goes at the end of the `target`
    stage (the last stage without a target), where the builder puts its own.
    """
    escape = "\\"
    for line in text.splitlines():
        if not line.startswith("#"):
            break  # parser directives come first
        found = _ESCAPE.match(line)
        if found:
            escape = found.group(1)
    words = []
    for key, value in sorted(image_labels.items()):
        words.append(f"{_quoted(key, escape)}={_quoted(value, escape)}")
    label = "LABEL " + " ".join(words) + "\n"
    if target:
        stages = list(_FROM.finditer(text))
        for i, stage in enumerate(stages):
            if (stage.group(1) or "").lower() == target.lower() and i + 1 < len(stages):
                cut = stages[i + 1].start()
                return text[:cut] + label + text[cut:]
    return text + ("" if text.endswith("\n") else "\n") + label


def _quoted(word: str, escape: str) -> str:
    """A double-quoted Dockerfile word: no variable expansion, no line continuation."""
    for special in (escape, '"', "$"):
        word = word.replace(special, escape + special)
    return '"' + word.replace("\n", " ") + '"'
