"""Planning: node kinds, layer profiles, the exact partitioner and the job planner."""
