"""ML-BFGS on the force field and the hybrid ML/fine optimiser."""
