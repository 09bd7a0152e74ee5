"""genforge pipelines."""
