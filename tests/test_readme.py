"""Every `ssd ...` command shown in README.md names a real command and only real flags."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from ssdcli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "examples").glob("*.md"))]
SCRIPTS = sorted((ROOT / "examples").glob("*.sh"))


def readme_commands() -> list[str]:
    """`ssd ...` invocations in the README's and examples' code blocks and in the example scripts
    (console prompts and continuation lines joined)."""
    blocks = [block for doc in DOCUMENTS for block in re.findall(r"```(?:bash|console)\n(.*?)```", doc.read_text(), flags=re.S)]
    blocks += [script.read_text() for script in SCRIPTS]
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            line = re.sub(r"^torchrun .*?-m ssdcli ", "ssd ", line)
            # shell expansions become plain words, quotes stay balanced
            line = re.sub(r"\$\(\(.*?\)\)|\$\{[^}]*\}|\$[A-Za-z_]\w*", "X", line)
            if line.startswith("ssd "):
                commands.append(line.split(" #")[0].split(" | ")[0].split(" > ")[0].strip())
    return commands


def options_of(command) -> set[str]:
    names = set()
    for param in command.params:
        names.update(getattr(param, "opts", []))
        names.update(getattr(param, "secondary_opts", []))
    return names | {"--help"}


def resolve(tokens: list[str]):
    """The click command a token list names, and the tokens after the command names."""
    command = typer.main.get_command(app)
    rest = tokens[1:]  # drop "ssd"
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command = command.commands[rest[0]]
        rest = rest[1:]
    return command, rest


COMMANDS = readme_commands()


def test_readme_shows_every_command():
    shown = {shlex.split(c)[1] for c in COMMANDS}
    assert {"priors", "data", "train", "eval", "detect", "export"} <= shown


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_uses_real_flags(line):
    tokens = shlex.split(line)
    command, rest = resolve(tokens)
    assert not hasattr(command, "commands"), f"{line}: names a command group, not a command"
    flags = {t.split("=")[0] for t in rest if t.startswith("--")}
    unknown = flags - options_of(command)
    assert not unknown, f"{line}: unknown flag(s) {sorted(unknown)}"
