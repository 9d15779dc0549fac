"""The mesh page: a live topology view served by the data plane's admin API.

Pure parts: `edges` (the proxy's per-client counts as rates over a window),
`timeline` (recent events, resumable by id), `topology` (the page's
document), `logs` (what the controller may show of a replica's logs). The
aiohttp edge is `server`; the page itself is `static/` (no build step).
"""
