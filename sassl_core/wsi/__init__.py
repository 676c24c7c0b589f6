"""Whole-slide data layer: slide reading, tissue detection, tiling, patch index and cache."""
