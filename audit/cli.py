"""`starter.py audit …`: the verify commands and the views, each group in its own module."""

from __future__ import annotations

import typer

from audit import cmd_verify, cmd_views

audit_app = typer.Typer(help="The auditor's tools: replay, verify, timelines, rules, checkpoints.",
                        no_args_is_help=True)
cmd_verify.register(audit_app)
cmd_views.register(audit_app)
