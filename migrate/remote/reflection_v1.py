"""Server reflection ``grpc.reflection.v1`` beside ``v1alpha`` (docs/api.md).

grpcio-reflection (up to 1.85 at least) serves only ``grpc.reflection.v1alpha.ServerReflection``;
newer grpcurl, Postman and grpc-java/go clients ask ``grpc.reflection.v1`` first. The two
protocols are the same messages with the same field numbers under another package, so v1 is
served by the same servicer, decoding and encoding with the v1alpha messages. The v1 file
descriptor (v1alpha's renamed) is added to the default pool so reflection can describe itself.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_FILE_NAME = "grpc/reflection/v1/reflection.proto"
_ALPHA, _V1 = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."


def _register_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE_NAME)
        return  # a grpcio-reflection with v1 of its own registered it
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = _FILE_NAME, "grpc.reflection.v1"
    proto.options.ClearField("deprecated")
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # scalars have none; setting "" would give them one
                field.type_name = field.type_name.replace(_ALPHA, _V1)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(_ALPHA, _V1)
        method.output_type = method.output_type.replace(_ALPHA, _V1)
    pool.AddSerializedFile(proto.SerializeToString())


def enable_server_reflection(service_names: tuple[str, ...], server: grpc.Server) -> None:
    """Serve reflection v1alpha and v1 for ``service_names`` (both reflection services are listed)."""
    _register_descriptor()
    names = (*service_names, reflection.SERVICE_NAME, SERVICE_NAME)
    servicer = reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {"ServerReflectionInfo": handler}),))

