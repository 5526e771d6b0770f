"""`make bench`: throughput and latency of the services through gRPC, next to
the floor (the fewest DynamoDB calls each operation needs, issued through the
services' lean client; and the same calls with boto3, for reference), with the
services' DynamoDB calls and CPU per op, on a local cluster of its own. Not
part of the tests. Entry point: `python -m bench`."""
