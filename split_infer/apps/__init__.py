"""Applications built on the services: `detect` (both halves in one process), `demo` (the whole
pipeline on one machine) and the sample footage they use."""
