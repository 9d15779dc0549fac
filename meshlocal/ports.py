"""The data plane's fixed ports and its two modes, apart from the data plane itself.

The CLI needs these to publish and find the data plane; importing them
from `serving` would load the whole data plane (aiohttp, the DNS server).
"""

from __future__ import annotations

from typing import Literal

Mode = Literal["container", "host"]

# Ports inside the data-plane container. Envoy's admin port is 9901 and
# Istio's 15000; high ports keep clear of the client alias ports.
ADMIN_PORT = 15000
PUBLIC_PORT = 15080
