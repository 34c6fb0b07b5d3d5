"""Checkpoints that cross tools: podman's and CRI-O's (kubelet's) archives and checkpoint images.

The engines share one layout (docs/interop.md): ``checkpoint/`` with the CRIU images, ``config.dump``
(the engine's own container record), ``spec.dump`` (the OCI runtime spec the container ran with),
``rootfs-diff.tar`` and ``deleted.files`` (the root's changes), ``network.status``, ``stats-dump``
and optional ``volumes/``. ``foreign`` reads it (detection, safe extraction, validation), ``crio``
maps CRI-O's metadata, ``inspect`` shows any checkpoint like ``checkpointctl show``; the import,
export and checkpoint-image modules build on them.
"""
