"""Generated from protos/conveyor/v1 by scripts/gen_protos.py."""
