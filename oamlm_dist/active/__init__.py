"""Active learning: bootstrap ensembles, nearsighted chunks and the learn loop."""
