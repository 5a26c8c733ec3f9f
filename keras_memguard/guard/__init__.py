"""The guard: pure policy over snapshots, the Keras callback that wires it, its writers."""
