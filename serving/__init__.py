"""genforge serving."""
