"""The read API (`split-infer api`) and the operator dashboard it serves (static/)."""
