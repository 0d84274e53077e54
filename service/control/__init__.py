"""The control plane: one controller per job, its stage actors, live moves and recovery."""
