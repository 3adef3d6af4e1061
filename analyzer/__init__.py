"""Postmortem: incident reports for deep-learning training runs."""

__version__ = "0.1.0"
