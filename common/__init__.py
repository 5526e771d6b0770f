"""Shared pieces of the three services: configuration, the DynamoDB client and
table definitions, the user-progress record, and the gRPC edge (errors, logging,
server runtime)."""
