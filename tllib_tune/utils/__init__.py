"""Utilities shared by the engine, examples and scripts: memory accounting and friends."""
