"""REST API and dashboard (FastAPI). The service lands with its own issue; the engine is usable
from the CLI (`pipewave train`) today."""
