"""Metrics, tables and pictures."""
