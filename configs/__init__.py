"""Experiment configs: one file per experiment, shared pieces in common.py."""
