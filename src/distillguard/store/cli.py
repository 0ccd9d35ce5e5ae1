"""CLI for keys, accounts and events (owned by distillguard.store)."""

import typer

keys_app = typer.Typer(no_args_is_help=True)
accounts_app = typer.Typer(no_args_is_help=True)
events_app = typer.Typer(no_args_is_help=True)
