"""Generated SPIFFE Workload API code; regenerate with scripts/gen_proto.py."""
