"""Shared pieces objectives compose: teachers, masking, heads."""
