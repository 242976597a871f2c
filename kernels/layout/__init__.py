"""Shared-memory layout: offsets and sizes only (no code that touches memory)."""
