"""The manifest fields behind Copilot's event and storage variables.

`publish.topics`, `subscribe` (Worker Services) and `storage.volumes`
become COPILOT_SNS_TOPIC_ARNS, COPILOT_QUEUE_URI, COPILOT_TOPIC_QUEUE_URIS
and COPILOT_MOUNT_POINTS (internal/pkg/template/templates/workloads/
partials/cf/envvars-common.yml, envvars-container.yml). Only what those
variables need is read here; the rest of the sections stay not emulated.
"""

from __future__ import annotations

from meshlocal.manifest.fields import Fields
from meshlocal.manifest.merge import is_null
from meshlocal.manifest.model import TopicQueue
from meshlocal.manifest.yaml12 import Map, Node


def _enabled(f: Fields, node: Node | None, field: str) -> bool:
    """A `Bool or config` union (FIFOAdvanceConfigOrBool, SQSQueueOrBool): set and not false."""
    if node is None or is_null(node):
        return False
    if isinstance(node, Map):
        return bool(node.items)
    return bool(f.boolean(node, field))


def publish_topics(f: Fields, node: Node | None) -> tuple[str, ...]:
    """Topic names as Copilot names them: `.fifo` on a FIFO topic (workload.go, publishedTopics)."""
    publish = f.mapping(node, "publish")
    if publish is None:
        return ()
    topics = publish.get("topics")
    if topics is None or is_null(topics):
        return ()
    out: list[str] = []
    for index, topic in enumerate(f.sequence(topics, "publish.topics")):
        where = f"publish.topics[{index}]"
        m = f.mapping(topic, where)
        if m is None:
            continue
        name = f.string(m.get("name"), f"{where}.name")
        if name is None:
            continue
        out.append(name + ".fifo" if _enabled(f, m.get("fifo"), f"{where}.fifo") else name)
    return tuple(out)


def subscriptions(f: Fields, node: Node | None) -> tuple[bool, tuple[TopicQueue, ...]]:
    """(default queue is FIFO, the topics with their own queue), as WorkerService.Subscriptions."""
    subscribe = f.mapping(node, "subscribe")
    if subscribe is None:
        return False, ()
    queue = subscribe.get("queue")
    default_fifo = isinstance(queue, Map) and _enabled(f, queue.get("fifo"), "subscribe.queue.fifo")
    topics = subscribe.get("topics")
    if topics is None or is_null(topics):
        return default_fifo, ()
    own: list[TopicQueue] = []
    for index, topic in enumerate(f.sequence(topics, "subscribe.topics")):
        where = f"subscribe.topics[{index}]"
        m = f.mapping(topic, where)
        if m is None:
            continue
        name = f.string(m.get("name"), f"{where}.name")
        service = f.string(m.get("service"), f"{where}.service")
        topic_queue = m.get("queue")
        if name is None or service is None or not _enabled(f, topic_queue, f"{where}.queue"):
            continue
        fifo = isinstance(topic_queue, Map) and _enabled(
            f, topic_queue.get("fifo"), f"{where}.queue.fifo"
        )
        own.append(TopicQueue(service, name + ".fifo" if fifo else name, fifo))
    return default_fifo, tuple(own)


def mount_points(f: Fields, node: Node | None, field: str) -> dict[str, str]:
    """storage.volumes: volume name -> container path (convertMountPoints)."""
    storage = f.mapping(node, field)
    if storage is None:
        return {}
    volumes = f.mapping(storage.get("volumes"), f"{field}.volumes")
    if volumes is None:
        return {}
    out: dict[str, str] = {}
    for name, volume in volumes.items.items():
        m = f.mapping(volume, f"{field}.volumes.{name}")
        path = f.string(m.get("path"), f"{field}.volumes.{name}.path") if m is not None else None
        if path:  # generateMountPointJSON skips an empty container path
            out[name] = path
    return out


def sidecar_mount_points(f: Fields, node: Node | None, field: str) -> dict[str, str]:
    """sidecars.<name>.mount_points: [{source_volume, path}] -> volume -> path."""
    if node is None or is_null(node):
        return {}
    out: dict[str, str] = {}
    for index, item in enumerate(f.sequence(node, field)):
        m = f.mapping(item, f"{field}[{index}]")
        if m is None:
            continue
        source = f.string(m.get("source_volume"), f"{field}[{index}].source_volume")
        path = f.string(m.get("path"), f"{field}[{index}].path")
        if source is not None and path:
            out[source] = path
    return out
