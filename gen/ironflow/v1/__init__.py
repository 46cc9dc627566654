"""Generated Protobuf, gRPC and Connect code for ironflow.v1 (scripts/generate.sh)."""
