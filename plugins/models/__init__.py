"""Built-in model adapters, one module per family."""
