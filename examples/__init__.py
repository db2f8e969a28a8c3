"""End-to-end examples: detlstm on the workloads its users run (python -m examples.<name> --help)."""
