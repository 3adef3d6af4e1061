"""`python -m analyzer` is the `postmortem` command group."""

from analyzer.cli import postmortem

postmortem(prog_name="postmortem")
