"""cxrbench."""
