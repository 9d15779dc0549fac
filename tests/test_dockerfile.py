"""dockerfile.py: where COPY puts a context's files, and when a change needs a real build."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshlocal import dockerfile as D


def layout(text: str, base: str = "/") -> D.Layout:
    parsed = D.parse(text)
    assert parsed is not None
    found = D.layout(parsed, base)
    assert found is not None, text
    return found


def no_dirs(_path: str) -> bool:
    return False


def plan(
    text: str, old: dict[str, str], new: dict[str, str], dirs: frozenset[str] = frozenset()
) -> D.Patch | None:
    return D.plan_patch(layout(text), old, new, lambda p: p in dirs)


PY = """\
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY app.py /app/app.py
COPY static/ static/
ENV PORT=80
CMD ["python3", "/app/app.py"]
"""
FILES = {"requirements.txt": "a", "app.py": "b", "static/x.css": "c", "static/img/y.png": "d"}


def test_a_changed_file_copied_after_the_last_run_is_one_write() -> None:
    assert plan(PY, FILES, {**FILES, "app.py": "B"}) == D.Patch({"/app/app.py": "app.py"})
    nested = {**FILES, "static/img/y.png": "D"}
    assert plan(PY, FILES, nested) == D.Patch({"/app/static/img/y.png": "static/img/y.png"})


def test_a_new_file_under_a_copied_directory_is_written() -> None:
    added = {**FILES, "static/new.js": "e"}
    assert plan(PY, FILES, added) == D.Patch({"/app/static/new.js": "static/new.js"})


def test_a_file_read_before_a_run_needs_a_build() -> None:
    assert plan(PY, FILES, {**FILES, "requirements.txt": "A"}) is None


def test_a_removed_file_needs_a_build() -> None:
    # A build would show what the base image has there: only it knows.
    gone = {k: v for k, v in FILES.items() if k != "static/x.css"}
    assert plan(PY, FILES, gone) is None


def test_a_file_no_step_copies_changes_nothing() -> None:
    assert plan(PY, {**FILES, "README": "x"}, {**FILES, "README": "y"}) == D.Patch({})
    assert D.Patch({}).empty


def test_copy_dot_and_a_run_after_it_needs_a_build() -> None:
    text = "FROM scratch\nCOPY . /src\nRUN make\n"
    assert plan(text, {"main.c": "a"}, {"main.c": "b"}) is None


def test_copy_dot_with_only_metadata_after() -> None:
    text = 'FROM scratch\nWORKDIR /srv\nCOPY . .\nEXPOSE 80\nLABEL a=b\nCMD ["x"]\n'
    assert plan(text, {"a/b.txt": "1"}, {"a/b.txt": "2"}) == D.Patch({"/srv/a/b.txt": "a/b.txt"})


def test_the_last_copy_to_a_path_wins() -> None:
    text = "FROM scratch\nCOPY . /app/\nCOPY special.py /app/app.py\n"
    old = {"app.py": "1", "special.py": "2"}
    # app.py's own change is hidden in the image by the later COPY.
    assert plan(text, old, {**old, "app.py": "9"}) == D.Patch({})
    assert plan(text, old, {**old, "special.py": "9"}) == D.Patch(
        {"/app/app.py": "special.py", "/app/special.py": "special.py"}
    )


def test_a_single_file_to_an_existing_directory_goes_into_it() -> None:
    text = "FROM scratch\nCOPY tool /usr/bin\n"
    assert plan(text, {"tool": "1"}, {"tool": "2"}, dirs={"/usr/bin"}) == D.Patch(
        {"/usr/bin/tool": "tool"}
    )
    assert plan(text, {"tool": "1"}, {"tool": "2"}) == D.Patch({"/usr/bin": "tool"})


def test_globs_copy_matches_by_name() -> None:
    text = "FROM scratch\nCOPY *.py /app/\n"
    old = {"a.py": "1", "b.txt": "2", "pkg/c.py": "3"}
    assert plan(text, old, {**old, "a.py": "9"}) == D.Patch({"/app/a.py": "a.py"})
    assert plan(text, old, {**old, "pkg/c.py": "9"}) == D.Patch({})


def test_a_source_that_matches_nothing_needs_a_build() -> None:
    text = "FROM scratch\nCOPY app.py /app/\n"
    assert plan(text, {"app.py": "1"}, {"other.py": "1"}) is None


def test_relative_destination_uses_the_base_images_workdir() -> None:
    parsed = D.parse("FROM python\nCOPY app.py .\n")
    assert parsed is not None
    found = D.layout(parsed, "/usr/src")
    assert found is not None
    assert D.plan_patch(found, {"app.py": "1"}, {"app.py": "2"}, no_dirs) == D.Patch(
        {"/usr/src/app.py": "app.py"}
    )


def test_chown_with_numbers_is_kept_for_the_layer() -> None:
    (step,) = layout("FROM scratch\nCOPY --chown=1000:100 a /a\n").copies
    assert (step.uid, step.gid) == (1000, 100)
    (step,) = layout("FROM scratch\nCOPY --chown=1000 a /a\n").copies
    assert (step.uid, step.gid) == (1000, 1000)


def test_what_the_planner_leaves_to_the_builder() -> None:
    refused = [
        "FROM a AS one\nFROM b\nCOPY x /x\n",  # several stages
        "FROM a\nCOPY --chown=app x /x\n",  # a user name
        "FROM a\nCOPY --chmod=755 x /x\n",
        "FROM a\nCOPY $SRC /x\n",
        "FROM a\nWORKDIR $HOME\n",
        "FROM a\nCOPY a b /x\n",  # several sources to a file
        "FROM a\nCOPY <<EOF /x\nhi\nEOF\n",
        "FROM a\nFROBNICATE x\n",
        "# escape=`\nFROM a\n",
    ]
    for text in refused:
        parsed = D.parse(text)
        assert parsed is None or D.layout(parsed, "/") is None, text


def test_add_of_a_changed_file_needs_a_build_and_copy_from_is_a_barrier() -> None:
    text = "FROM a\nADD site.tar /srv/\nCOPY app.py /app/\n"
    assert plan(text, {"site.tar": "1", "app.py": "1"}, {"site.tar": "2", "app.py": "1"}) is None
    assert plan(text, {"site.tar": "1", "app.py": "1"}, {"site.tar": "1", "app.py": "2"}) == (
        D.Patch({"/app/app.py": "app.py"})
    )
    after = "FROM a\nCOPY app.py /app/\nCOPY --from=tools /bin/x /bin/x\n"
    assert plan(after, {"app.py": "1"}, {"app.py": "2"}) is None


def test_continuations_comments_and_json_form() -> None:
    text = 'FROM scratch\nCOPY ["a b.txt", \\\n  # a comment\n  "/dst/"]\n'
    assert plan(text, {"a b.txt": "1"}, {"a b.txt": "2"}) == D.Patch({"/dst/a b.txt": "a b.txt"})


names = st.text(alphabet="abcxyz", min_size=1, max_size=3)
paths = st.lists(names, min_size=1, max_size=3).map("/".join)
tables = st.dictionaries(paths, st.sampled_from(["1", "2", "3"]), min_size=1, max_size=8)


@given(old=tables, new=tables)
def test_a_patch_turns_the_old_image_into_the_new_one(
    old: dict[str, str], new: dict[str, str]
) -> None:
    """Applying the writes to the old image's files gives exactly the new image's files."""
    lay = layout("FROM scratch\nWORKDIR /w\nCOPY . .\nCMD x\n")
    patch = D.plan_patch(lay, old, new, no_dirs)
    before = D.image_files(lay, old, no_dirs)
    after = D.image_files(lay, new, no_dirs)
    assert before is not None and after is not None
    if patch is None:
        assert set(before) - set(after)  # only a vanished file refuses here
        return
    image = {path: old[rel] for path, (_step, rel) in before.items()}
    for path, rel in patch.writes.items():
        image[path] = new[rel]
    assert image == {path: new[rel] for path, (_step, rel) in after.items()}


@given(st.text(max_size=300))
def test_parse_never_raises(text: str) -> None:
    parsed = D.parse(text)
    if parsed is not None:
        D.layout(parsed, "/")
