"""Where a Dockerfile's COPY steps put a context's files, and when a change needs no build.

Docker's legacy builder, the one the engine API offers, commits a layer per
step, and on a slow storage driver (fuse-overlayfs: 2-4 s a step) a one-line
edit costs ten seconds before anything runs. But when the files that changed
are only read by COPY steps, and no RUN comes after those steps, the image a
build would make differs from the last one by exactly those files.
`plan_patch` computes that difference, as paths to write, from the two
file tables; the caller adds them to the last image as one layer. Anything
it cannot be sure of (a RUN after a changed COPY, variables in a path,
several stages, ADD of a changed file, a file that vanished) gives None:
only a real build can tell, and the caller runs one.

Pure: the image's filesystem is asked through `is_dir`.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

# Steps that change no file: a patch may skip them when they follow a changed COPY.
METADATA = frozenset(
    {
        "ENV",
        "EXPOSE",
        "CMD",
        "ENTRYPOINT",
        "LABEL",
        "USER",
        "VOLUME",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "ARG",
        "SHELL",
        "MAINTAINER",
        "WORKDIR",
    }
)
_GLOB = re.compile(r"[*?\[]")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z]+)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str
    line: int  # 1-based, where it starts


@dataclass(frozen=True)
class CopyStep:
    """One COPY (or ADD) from the context, its destination resolved against WORKDIR."""

    index: int  # position among the instructions
    sources: tuple[str, ...]  # cleaned, relative to the context ("." is the whole)
    dest: str  # absolute
    dest_dir: bool | None  # True: a directory; None: a single file source may go either way
    uid: int
    gid: int
    add: bool


@dataclass(frozen=True)
class Layout:
    """What the planner needs of a single-stage Dockerfile."""

    copies: tuple[CopyStep, ...]
    # Instruction indexes that a patch cannot reproduce: RUN, ONBUILD, COPY --from, ADD.
    barriers: tuple[int, ...]


@dataclass(frozen=True)
class Patch:
    """Image paths (absolute) to write, each from a context file."""

    writes: dict[str, str]  # image path -> context-relative source

    @property
    def empty(self) -> bool:
        return not self.writes


def parse(text: str) -> list[Instruction] | None:
    """The instructions, continuation lines joined; None for an escape other than `\\`."""
    lines = text.splitlines()
    escape = "\\"
    for line in lines:
        found = _DIRECTIVE.match(line)
        if not found:
            break
        if found.group(1).lower() == "escape":
            escape = found.group(2)
    if escape != "\\":
        return None
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        joined = " ".join(part.strip() for part in pending if part.strip())
        pending = []
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    if pending:
        joined = " ".join(part.strip() for part in pending if part.strip())
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    return out


def layout(instructions: Iterable[Instruction], base_workdir: str = "/") -> Layout | None:
    """The COPY steps of a single-stage Dockerfile, or None when a patch can't reason about it."""
    copies: list[CopyStep] = []
    barriers: list[int] = []
    workdir = base_workdir or "/"
    stages = 0
    for index, ins in enumerate(instructions):
        if ins.keyword == "FROM":
            stages += 1
            if stages > 1:
                return None
            continue
        if "<<" in ins.args and ins.keyword in ("RUN", "COPY", "ADD"):
            return None  # heredocs
        if ins.keyword == "WORKDIR":
            if "$" in ins.args:
                return None
            workdir = posixpath.normpath(posixpath.join(workdir, _unquote(ins.args.strip())))
            continue
        if ins.keyword in ("COPY", "ADD"):
            step = _copy_step(index, ins, workdir)
            if step is None:
                return None
            if isinstance(step, int):  # COPY --from: not the context
                barriers.append(index)
                continue
            copies.append(step)
            if step.add:
                barriers.append(index)  # ADD may unpack an archive: its output is unknown
            continue
        if ins.keyword in ("RUN", "ONBUILD"):
            barriers.append(index)
            continue
        if ins.keyword not in METADATA:
            return None  # an instruction this planner doesn't know
    if stages != 1:
        return None
    return Layout(tuple(copies), tuple(barriers))


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'":
        return word[1:-1]
    return word


def _copy_step(index: int, ins: Instruction, workdir: str) -> CopyStep | int | None:
    words = _words(ins.args)
    if words is None:
        return None
    uid = gid = 0
    while words and words[0].startswith("--"):
        flag, _, value = words.pop(0)[2:].partition("=")
        if flag == "from":
            return index
        if flag != "chown":
            return None  # --chmod, --link, --parents: BuildKit's, or not reasoned about
        user, _, group = value.partition(":")
        if not user.isdigit() or (group and not group.isdigit()):
            return None  # names need the image's /etc/passwd
        uid = int(user)
        gid = int(group) if group else uid
    if len(words) < 2 or any("$" in w for w in words):
        return None
    *sources, dest = words
    cleaned: list[str] = []
    for src in sources:
        if "://" in src:
            return None  # ADD of a URL
        norm = posixpath.normpath(src.lstrip("/")) if src not in ("", "/") else "."
        if norm.startswith(".."):
            return None
        cleaned.append(norm)
    as_dir = dest.endswith("/") or dest in (".", "./")
    if len(sources) > 1 and not as_dir:
        return None  # the builder refuses it; let it say so
    absolute = posixpath.normpath(posixpath.join(workdir, dest))
    return CopyStep(
        index=index,
        sources=tuple(cleaned),
        dest=absolute,
        dest_dir=True if as_dir else None,
        uid=uid,
        gid=gid,
        add=ins.keyword == "ADD",
    )


def _words(args: str) -> list[str] | None:
    if args.startswith("["):
        try:
            parsed = json.loads(args)
        except ValueError:
            return None
        if not isinstance(parsed, list) or not all(isinstance(w, str) for w in parsed):
            return None
        return list(parsed)
    return args.split()


def targets(
    step: CopyStep, files: Iterable[str], is_dir: Callable[[str], bool]
) -> dict[str, str] | None:
    """Image path -> context file for every file `step` copies; None: a source matches nothing."""
    files = list(files)
    out: dict[str, str] = {}
    for src in step.sources:
        matched = False
        for rel in files:
            into = _into(src, rel)
            if into is None:
                continue
            matched = True
            kind, rest = into
            if kind == "dir":
                out[posixpath.join(step.dest, rest)] = rel
            elif step.dest_dir or (step.dest_dir is None and is_dir(step.dest)):
                out[posixpath.join(step.dest, posixpath.basename(rel))] = rel
            else:
                out[step.dest] = rel
        if not matched:
            return None
    return out


def _into(src: str, rel: str) -> tuple[str, str] | None:
    """How `rel` is copied by source `src`: ("file", "") as itself, ("dir", rest) under a dir."""
    if src == ".":
        return ("dir", rel)
    if _GLOB.search(src):
        parts = rel.split("/")
        pattern = src.split("/")
        if len(parts) < len(pattern):
            return None
        head = parts[: len(pattern)]
        if not all(fnmatch.fnmatchcase(p, q) for p, q in zip(head, pattern, strict=True)):
            return None
        if len(parts) == len(pattern):
            return ("file", "")
        return ("dir", "/".join(parts[len(pattern) :]))
    if rel == src:
        return ("file", "")
    if rel.startswith(src + "/"):
        return ("dir", rel[len(src) + 1 :])
    return None


def image_files(
    layout_: Layout, files: Iterable[str], is_dir: Callable[[str], bool]
) -> dict[str, tuple[int, str]] | None:
    """Image path -> (the step that wrote it last, its context file)."""
    files = sorted(files)
    final: dict[str, tuple[int, str]] = {}
    for step in layout_.copies:
        mapped = targets(step, files, is_dir)
        if mapped is None:
            return None
        for path, rel in mapped.items():
            final[path] = (step.index, rel)
    return final


def plan_patch(
    layout_: Layout,
    old: Mapping[str, str],
    new: Mapping[str, str],
    is_dir: Callable[[str], bool],
) -> Patch | None:
    """The writes that turn the image built from `old` into the one built from `new`.

    `old` and `new`: context-relative path -> a fingerprint of its content and mode.
    A file that no longer reaches the image gives None: a build would show
    what the base image has there, if anything, which only the build knows.
    """
    before = image_files(layout_, old, is_dir)
    after = image_files(layout_, new, is_dir)
    if before is None or after is None:
        return None
    if any(path not in after for path in before):
        return None
    writes: dict[str, str] = {}
    involved: list[int] = []
    for path, (step, rel) in after.items():
        was = before.get(path)
        if was is not None and was[1] == rel and old.get(rel) == new.get(rel):
            continue
        writes[path] = rel
        involved.append(step)
        if was is not None:
            involved.append(was[0])
    if involved:
        first = min(involved)
        if any(b >= first for b in layout_.barriers):
            return None  # a RUN (or ADD) after a changed COPY may have read the files
    return Patch(writes)
