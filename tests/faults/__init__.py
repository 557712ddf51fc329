"""Fault injection: killed workers and clients, write errors, hanging fine calculations."""
