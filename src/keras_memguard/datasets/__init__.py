"""Datasets that keras-memguard ships (they need no download)."""
