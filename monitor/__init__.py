"""The operator's CLI: what a running stack is doing, and why."""
