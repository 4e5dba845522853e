"""The coordinator's gRPC edge: servicers, clients and the protobuf conversions.

The only coordinator package (with ``coordinator.server``) that touches generated
protobuf code. Servicers convert a request, call one domain object, convert the answer;
exceptions become status codes through ``edgeshard.rpc``'s one table.
"""
