"""HTTP/JSON gateway in front of the XP, Achievements and Levels gRPC services (`python -m gateway`).

It only translates: each route names one RPC; bodies and responses use the
protobuf JSON mapping; gRPC status codes become HTTP statuses through one
table (gateway.status); the OpenAPI document (/openapi.json) is generated
from the same route table and the protobuf descriptors."""
