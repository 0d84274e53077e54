"""Worker-side code: the action IR and placement, the stage config, models, data, and the
pipeline stage actors. Imports nothing from the service, the API or the command line."""
