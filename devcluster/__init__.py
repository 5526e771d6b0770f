"""The local cluster as processes: DynamoDB Local, the four services and the gateway."""
