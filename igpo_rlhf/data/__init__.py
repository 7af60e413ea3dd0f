"""Datasets, the embedded demo world and the tiny demo model."""
