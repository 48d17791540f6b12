"""The job client never sends the auth token in clear text to another machine unless told to (--insecure).

No traffic leaves this machine: every connection attempt is caught by ``no_network`` and refused, so a
test can see whether the client *would* have connected without it ever doing so.
"""

from __future__ import annotations

import socket

import pytest
from helpers import ROOT

from pipelines.cli.main import main
from pipelines.cluster import jobs
from pipelines.cluster.auth import AuthToken
from pipelines.errors import PipelineError

TOKEN = AuthToken("secret-token", "RAY_AUTH_TOKEN")
REMOTE = "http://198.51.100.7:8265"  # TEST-NET-2: never reached, the guard below refuses every connection


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every outgoing connection is recorded and refused (OSError) before a packet is sent."""
    attempts: list = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("connection blocked by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: refuse(host))
    return attempts


@pytest.fixture
def token_env(monkeypatch) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN.value)


@pytest.mark.parametrize(
    ("url", "token", "insecure", "refused"),
    [
        (REMOTE, TOKEN, False, True),
        ("http://ray-head.internal:8265", TOKEN, False, True),
        ("http://10.0.0.5:8265", TOKEN, False, True),
        (REMOTE, TOKEN, True, False),  # the user said so
        ("https://198.51.100.7:8265", TOKEN, False, False),  # encrypted
        (REMOTE, None, False, False),  # no secret to leak
        ("http://127.0.0.1:8265", TOKEN, False, False),  # an SSH tunnel's end
        ("http://127.8.9.10:8265", TOKEN, False, False),
        ("http://localhost:8265", TOKEN, False, False),
        ("http://[::1]:8265", TOKEN, False, False),
        ("http://localhost.evil.example:8265", TOKEN, False, True),
    ],
)
def test_the_token_goes_over_plain_http_only_to_this_machine(url, token, insecure, refused):
    if refused:
        with pytest.raises(PipelineError, match=r"over plain http.*https.*ray dashboard cluster.yaml.*--insecure"):
            jobs.check_transport(url, token, insecure)
    else:
        jobs.check_transport(url, token, insecure)


@pytest.mark.usefixtures("token_env")
def test_a_remote_http_address_is_refused_before_any_connection(no_network):
    for call in (lambda: jobs.status("raysubmit_x", REMOTE), lambda: jobs.stop("raysubmit_x", REMOTE),
                 lambda: jobs.logs("raysubmit_x", REMOTE)):
        with pytest.raises(PipelineError, match="Refusing to send the Ray auth token"):
            call()
    assert no_network == []


@pytest.mark.usefixtures("token_env")
@pytest.mark.parametrize("command", ["status", "logs", "stop"])
def test_the_cli_refuses_and_insecure_lets_it_try(command, no_network, capsys):
    assert main([command, "raysubmit_x", "--address", REMOTE]) == 2
    assert "--insecure" in capsys.readouterr().err
    assert no_network == []
    assert main([command, "raysubmit_x", "--address", REMOTE, "--insecure"]) == 2
    assert "Cannot reach the Ray dashboard" in capsys.readouterr().err  # it tried: the guard refused
    assert no_network and no_network[0][0] == "198.51.100.7"


@pytest.mark.usefixtures("token_env")
def test_submit_refuses_too(no_network, capsys):
    argv = ["submit", str(ROOT / "jobs" / "label_news.yaml"), "--address", REMOTE, "--set", "output.path=s3://bucket/out"]
    assert main(argv) == 2
    assert "Refusing to send the Ray auth token" in capsys.readouterr().err
    assert main([*argv, "--insecure"]) == 2
    assert "Cannot reach the Ray dashboard" in capsys.readouterr().err
    assert no_network == [("198.51.100.7", 8265)]
