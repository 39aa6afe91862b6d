"""Hallucination detectors for reconstruction models (planned: see docs/design.md)."""
