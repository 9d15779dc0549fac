"""The Docker side of meshlocal: images, the engine adapter, and the replica lifecycle.

- `images`: offline builds (Python base by debootstrap, busybox, the data plane,
  service images from image.build, image.location).
- `engine`: a typed adapter over the docker SDK, with errors mapped to MeshlocalError,
  Docker's event stream and log streams delivered to asyncio.
- `reconcile`: desired state (replica templates and counts) and the pure planner.
- `replicas`: the event-driven reconciler that keeps `count` replicas alive and
  feeds the ReplicaRegistry.
- `dataplane`: the agent's container on the environment network.
- `labels`: the labels and names of everything meshlocal creates.
"""
