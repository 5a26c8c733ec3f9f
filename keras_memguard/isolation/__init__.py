"""Isolation: phases, batch-size searches and tuner trials in fresh processes."""
