"""The `ssd` command: one Typer app, each subcommand in its own module."""

from __future__ import annotations

from typing import Annotated

import typer

from ssdcli import __version__
from ssdcli.cli import priors as priors_cmd
from ssdcli.cli import detect as detect_cmd
from ssdcli.cli import eval as eval_cmd
from ssdcli.cli import export as export_cmd
from ssdcli.cli import import_model as import_cmd
from ssdcli.cli import train as train_cmd
from ssdcli.cli.data import data_app

app = typer.Typer(
    name="ssd",
    help="SSD: Single Shot MultiBox Detector, the whole lifecycle in one tool.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ssd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """SSD: Single Shot MultiBox Detector (Liu et al., ECCV 2016), the whole lifecycle in one tool."""


app.command("priors", help=priors_cmd.HELP, epilog=priors_cmd.EPILOG)(priors_cmd.priors)
app.command("train", help=train_cmd.HELP, epilog=train_cmd.EPILOG)(train_cmd.train)
app.command("eval", help=eval_cmd.HELP, epilog=eval_cmd.EPILOG)(eval_cmd.eval_command)
app.command("detect", help=detect_cmd.HELP, epilog=detect_cmd.EPILOG)(detect_cmd.detect)
app.command("export", help=export_cmd.HELP, epilog=export_cmd.EPILOG)(export_cmd.export)
app.command("import", help=import_cmd.HELP, epilog=import_cmd.EPILOG)(import_cmd.import_command)
app.add_typer(data_app, name="data")


def main() -> None:
    """Run the Typer app in this process. The ``ssd`` command enters through
    :func:`ssdcli.__main__.main`, which sets the OpenMP spin limit before this module loads torch."""
    app()
