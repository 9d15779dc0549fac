"""The images meshlocal needs, built locally and offline.

No registry is assumed reachable: the Python base comes from Debian packages
(debootstrap), tiny test services from Debian's static busybox, the data
plane from the meshlocal installed on the host. Every builder is cached by
tag, and the tag carries a content hash where the content can change.

This module is the one import for all of them; each part lives in its own:

- (a) the Python base via debootstrap: `pythonbase`
- (b) busybox test images: `busybox`
- (c) the data-plane image (and site images from installed files): `dataplaneimage`
- (d) service images from image.build: `serviceimages`
- what they share (the existence check, the streamed and cancellable build,
  image.location's pull): `imagebuild`
"""

from __future__ import annotations

from meshlocal.errors import ImageError as ImageError
from meshlocal.runtime.busybox import BUSYBOX_PATHS as BUSYBOX_PATHS
from meshlocal.runtime.busybox import ensure_busybox_image as ensure_busybox_image
from meshlocal.runtime.busybox import find_busybox as find_busybox
from meshlocal.runtime.dataplaneimage import DATAPLANE_DOCKERFILE as DATAPLANE_DOCKERFILE
from meshlocal.runtime.dataplaneimage import EMULATOR_ROOTS as EMULATOR_ROOTS
from meshlocal.runtime.dataplaneimage import build_site_image as build_site_image
from meshlocal.runtime.dataplaneimage import dataplane_context_hash as dataplane_context_hash
from meshlocal.runtime.dataplaneimage import distribution_files as distribution_files
from meshlocal.runtime.dataplaneimage import ensure_dataplane_image as ensure_dataplane_image
from meshlocal.runtime.dataplaneimage import image_python_version as image_python_version
from meshlocal.runtime.dataplaneimage import prune_images as prune_images
from meshlocal.runtime.dataplaneimage import runtime_distributions as runtime_distributions
from meshlocal.runtime.imagebuild import BuildCancel as BuildCancel
from meshlocal.runtime.imagebuild import BuildCancelled as BuildCancelled
from meshlocal.runtime.imagebuild import Progress as Progress
from meshlocal.runtime.imagebuild import ensure_image as ensure_image
from meshlocal.runtime.imagebuild import image_exists as image_exists
from meshlocal.runtime.pythonbase import DEBIAN_MIRROR_ENV as DEBIAN_MIRROR_ENV
from meshlocal.runtime.pythonbase import DEBIAN_SUITE_ENV as DEBIAN_SUITE_ENV
from meshlocal.runtime.pythonbase import DEFAULT_MIRROR as DEFAULT_MIRROR
from meshlocal.runtime.pythonbase import PYTHON_IMAGE_ENV as PYTHON_IMAGE_ENV
from meshlocal.runtime.pythonbase import default_suite as default_suite
from meshlocal.runtime.pythonbase import ensure_python_base as ensure_python_base
from meshlocal.runtime.pythonbase import python_base_tag as python_base_tag
from meshlocal.runtime.serviceimages import build_service_image as build_service_image
from meshlocal.runtime.serviceimages import context_files as context_files
from meshlocal.runtime.serviceimages import declared_build_args as declared_build_args
from meshlocal.runtime.serviceimages import dockerignore as dockerignore
from meshlocal.runtime.serviceimages import labelled_dockerfile as labelled_dockerfile

__all__ = [
    "PYTHON_IMAGE_ENV",
    "BuildCancel",
    "BuildCancelled",
    "build_service_image",
    "context_files",
    "declared_build_args",
    "ensure_busybox_image",
    "ensure_dataplane_image",
    "ensure_image",
    "ensure_python_base",
    "image_exists",
    "image_python_version",
    "labelled_dockerfile",
    "runtime_distributions",
]
