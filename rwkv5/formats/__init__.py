"""Checkpoint and state file formats (readers and writers), none of which executes file content."""
