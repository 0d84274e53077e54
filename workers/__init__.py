"""Worker-side code: the model zoo, data, and pipeline stage actors."""
