"""The `llmrun` command line (typer)."""
