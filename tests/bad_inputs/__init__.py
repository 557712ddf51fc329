"""A catalogue of malformed inputs, each run through the command line."""
