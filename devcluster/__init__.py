"""The local cluster as processes: DynamoDB Local and the three services."""
