from __future__ import annotations

import io
import threading

from meshlocal.cli.logprefix import LogPrinter


def test_prefixes_are_aligned_like_compose() -> None:
    out = io.StringIO()
    p = LogPrinter(out, colour=False)
    p.widen(["api-1", "front-end-1"])
    p.line("api-1", "hello\n")
    p.line("front-end-1", "world")
    assert out.getvalue().splitlines() == ["api-1        | hello", "front-end-1  | world"]


def test_each_replica_keeps_one_colour() -> None:
    out = io.StringIO()
    p = LogPrinter(out, colour=True)
    p.line("api-1", "a")
    p.line("api-2", "b")
    p.line("api-1", "c")
    lines = out.getvalue().splitlines()
    assert lines[0][:5] == lines[2][:5] != lines[1][:5]


def test_lines_from_threads_never_interleave() -> None:
    out = io.StringIO()
    p = LogPrinter(out, colour=False, width=5)

    def spam(name: str) -> None:
        for i in range(300):
            p.line(name, f"{name} line {i}")

    threads = [threading.Thread(target=spam, args=(f"api-{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1200
    assert all(line.split("  | ")[0] == line.split("  | ")[1].split(" ")[0] for line in lines)
