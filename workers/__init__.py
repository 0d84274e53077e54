"""Worker-side code: the action IR, models, data, and the pipeline stage actors."""
