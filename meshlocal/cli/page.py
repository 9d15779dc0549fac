"""`meshlocal open`: the mesh page (dashboard/) of a running mesh, in a browser."""

from __future__ import annotations

import json
import os
import sys
import webbrowser

import click

from meshlocal.cli.app import Context, cli, env_option, pass_context
from meshlocal.cli.render import err, out
from meshlocal.cli.running import running_mesh
from meshlocal.errors import DataPlaneError
from meshlocal.runtime.tunnel import forwarded


def page_url(admin_url: str) -> str:
    return admin_url.rstrip("/") + "/"


def can_open_browser() -> bool:
    """A graphical browser (or $BROWSER): a console one would take over the terminal."""
    if os.environ.get("BROWSER"):
        return True
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


@cli.command(name="open")
@env_option
@click.option("--print", "print_only", is_flag=True, help="Print the page's URL; open nothing.")
@click.option("--json", "as_json", is_flag=True, help='Print {"url": ...}; open nothing.')
@pass_context
def open_page(ctx: Context, env: str | None, print_only: bool, as_json: bool) -> None:
    """Open the mesh page: services, traffic, replicas, faults and events, live.

    Where no browser can be opened (no display, as over ssh) the URL is
    printed: the page answers on 127.0.0.1 only.
    """
    with running_mesh(ctx.directory, env) as dep:
        if forwarded(dep.engine, dep.project, dep.env):
            raise DataPlaneError(
                "the mesh page is forwarded through the engine only while a meshlocal "
                f"command runs (the engine at {dep.engine.host.url} is remote, or the mesh "
                "runs on a swarm)",
                hint="`meshlocal forward` keeps it open and prints its URL",
            )
        url = page_url(dep.dataplane().admin_url)
    if as_json:
        click.echo(json.dumps({"url": url}))
        return
    if print_only or not can_open_browser():
        if not print_only:
            err.print("[+] no browser to open here; the mesh page is at:", markup=False)
        out.print(url, markup=False, soft_wrap=True)
        return
    if webbrowser.open(url):
        err.print(f"[+] opened the mesh page {url}", markup=False)
    else:
        err.print("[+] the browser did not start; the mesh page is at:", markup=False)
        out.print(url, markup=False, soft_wrap=True)
