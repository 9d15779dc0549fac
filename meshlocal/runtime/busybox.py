"""The busybox test image: Debian's static busybox in a FROM scratch image."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import docker

from meshlocal.errors import ImageError
from meshlocal.runtime import labels
from meshlocal.runtime.imagebuild import (
    _add_bytes,
    _build_stream,
    _noop,
    image_exists,
)

BUSYBOX_PATHS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))


def find_busybox() -> Path:
    for path in BUSYBOX_PATHS:
        if path.is_file():
            return path
    raise ImageError(
        "no static busybox binary found (looked in /bin/busybox, /usr/bin/busybox)",
        hint="apt-get install busybox-static",
    )


def ensure_busybox_image(client: docker.DockerClient, busybox: Path | None = None) -> str:
    """A FROM scratch image with /bin/busybox and every applet linked in /bin.

    Tagged by the binary's hash, so a new busybox builds a new image.
    """
    binary = busybox or find_busybox()
    data = binary.read_bytes()
    tag = f"meshlocal/busybox:{hashlib.sha256(data).hexdigest()[:12]}"
    if image_exists(client, tag):
        return tag
    listing = subprocess.run([str(binary), "--list"], capture_output=True, text=True, check=True)
    applets = sorted({a for a in listing.stdout.split() if a and a != "busybox"})
    dockerfile = (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        f"LABEL {labels.IMAGE_KIND}=busybox\n"
        "ENV PATH=/bin\n"
        'CMD ["/bin/sh"]\n'
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_bytes(tar, "Dockerfile", dockerfile.encode())
        for directory in ("rootfs/bin", "rootfs/tmp", "rootfs/etc", "rootfs/var/www"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory.endswith("tmp") else 0o755
            tar.addfile(info)
        _add_bytes(tar, "rootfs/bin/busybox", data, mode=0o755)
        # httpd and friends look these up; scratch has neither.
        _add_bytes(tar, "rootfs/etc/passwd", b"root:x:0:0:root:/:/bin/sh\n")
        _add_bytes(tar, "rootfs/etc/group", b"root:x:0:\n")
        for applet in applets:
            info = tarfile.TarInfo(f"rootfs/bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
    buf.seek(0)
    _build_stream(
        client,
        tag,
        _noop,
        fileobj=buf,
        custom_context=True,
        what="the busybox image",
    )
    return tag
