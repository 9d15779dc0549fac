"""The Docker side of meshlocal: images, the engine adapter, and the replica lifecycle.

- `images`: offline builds, re-exported from `pythonbase` (Python base by
  debootstrap), `busybox`, `dataplaneimage` (the data plane), `serviceimages`
  (image.build) and `imagebuild` (the shared build stream, image.location);
  `patchbuild` patches one layer onto a service image when it can (meshlocal.builds).
- `engine`: a typed adapter over the docker SDK (`enginetypes`, `enginedecode`,
  `engineerrors`: its values, Docker's raw answers, errors mapped to MeshlocalError).
- `reconcile`: desired state (replica templates and counts) and the pure planner.
- `replicas`: the event-driven reconciler that keeps `count` replicas alive and
  feeds the ReplicaRegistry (`replicastate`, `replicatasks`, `restarts`, `rolling`,
  `runclients`, `replicaevents`, `readiness`: one part each).
- `dataplane`: the agent's container on the environment network.
- `pubsub`: the local SNS/SQS (moto) container, its image and provisioning.
- `oneoff`: `meshlocal exec` and `meshlocal run`.
- `labels`: the labels and names of everything meshlocal creates.
"""
