"""Finding and describing Windows inside physical memory, without symbols."""
