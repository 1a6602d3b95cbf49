"""Cloud services: the gRPC ingest, the detection workers and the detection head."""
