"""The daemon's edges: the gRPC server and servicer, the client (``RemoteEngine``), SSH reach,
TLS material, error mapping and the dataclass <-> protobuf conversions. Everything here is a thin
layer over ``migrate.api``; nothing below (the core, the archive, the runtime) imports it.
"""
