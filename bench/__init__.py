"""`make bench`: throughput and latency of the services through gRPC, next to
the floor (the same DynamoDB calls issued directly with boto3), on a local
cluster of its own. Not part of the tests. Entry point: `python -m bench`."""
