"""Physical memory sources: where each guest-physical page lives in an input file."""
