"""`starter.py audit …`: each group of commands lives in its own module and registers here."""

from __future__ import annotations

import typer

audit_app = typer.Typer(help="The auditor's tools: replay, verify, timelines, rules, checkpoints.",
                        no_args_is_help=True)


def _register() -> None:
    import importlib

    for name in ("infra.audit.cmd_verify", "infra.audit.cmd_views"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(audit_app)


_register()
