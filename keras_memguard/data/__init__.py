"""Data: the RAM-budgeted TFDS pipeline and the offline ``memguard_shapes`` dataset."""
