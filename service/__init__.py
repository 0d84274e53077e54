"""pipewave service: schedules, runtime, control plane."""
