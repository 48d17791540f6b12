"""Every `--address` the README's code blocks show is one the code accepts for that command."""

from __future__ import annotations

import re

import pytest
from helpers import ROOT

from pipelines.cluster.connect import gcs_address
from pipelines.cluster.jobs import dashboard_url

JOB_SERVER_COMMANDS = {"submit", "status", "logs", "stop"}
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
#: `pipelines run`, `pipelines, schedule` (a YAML args list), `ray start`: the command an option belongs to.
COMMAND = re.compile(r"(?<![\w/.~-])(pipelines|ray)[ \t,\"']+([\w|-]+)")
ADDRESS = re.compile(r"--address(?:=|[\s,\"']+)([^\s,\"'\]]+)")


def addresses_in_readme() -> list[tuple[str, str]]:
    """(command, address) for each --address in a fenced code block; command as in `pipelines <command>`."""
    found = []
    for block in FENCE.findall((ROOT / "README.md").read_text()):
        for match in ADDRESS.finditer(block):
            commands = list(COMMAND.finditer(block, 0, match.start()))
            assert commands, f"--address {match.group(1)} in a README code block with no command before it"
            program, command = commands[-1].groups()
            if program == "pipelines":
                found.append((command, match.group(1)))
    return found


def test_the_readme_shows_addresses_for_every_kind_of_command():
    commands = {command for command, _ in addresses_in_readme()}
    assert {"run", "schedule", "submit"} <= commands, commands


@pytest.mark.parametrize(("command", "address"), addresses_in_readme())
def test_every_address_the_readme_shows_is_accepted(command, address, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if set(command.split("|")) <= JOB_SERVER_COMMANDS:
        assert dashboard_url(address).startswith(("http://", "https://")), (command, address)
    else:  # run, schedule: a driver joins by the GCS address
        assert gcs_address(address) == address, (command, address)
