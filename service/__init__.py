"""pipewave's service layer: job specs, schedules, planning, the control plane, the cluster."""
