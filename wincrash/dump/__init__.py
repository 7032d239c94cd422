"""Writing Microsoft crash dumps (full and bitmap) and the conversion pipeline."""
