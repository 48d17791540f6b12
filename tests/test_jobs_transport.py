"""The job client never sends the auth token in clear text to another machine unless told to (--insecure).

No traffic leaves this machine: every connection attempt is caught by ``no_network`` and refused, so a
test can see whether the client *would* have connected without it ever doing so.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest
from helpers import ROOT
from urllib3.util import parse_url

from pipelines.cli.main import main
from pipelines.cluster import jobs
from pipelines.cluster.auth import AuthToken
from pipelines.errors import PipelineError

TOKEN = AuthToken("secret-token", "RAY_AUTH_TOKEN")
REMOTE = "http://198.51.100.7:8265"  # TEST-NET-2: never reached, the guard below refuses every connection


PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                   "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch) -> None:
    """No proxy from the environment this runs in; a test sets the one it is about."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


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


# --------------------------------------------------------------------------- #
# Addresses the guard (urllib) and the HTTP client (requests: urllib3) could read differently
# --------------------------------------------------------------------------- #

CONFUSING = [
    "http://attacker.invalid\\@127.0.0.1:8265",  # urllib: host 127.0.0.1; urllib3: host attacker.invalid
    "http://attacker.invalid\\@localhost:8265",
    "attacker.invalid\\@127.0.0.1:8265",  # bare, http:// added
    "http://user:password@127.0.0.1:8265",  # user info: requests would send it as Basic auth besides
    "http://127.0.0.1:8265@attacker.invalid",
    "http://attacker.invalid#@127.0.0.1:8265",
    "http://attacker.invalid?@127.0.0.1:8265",
    "http://127.0.0.1\t:8265",  # urllib drops tabs and newlines inside a URL before it splits it
    "http://127.0.0.1:8265/\nx",
    "http://127.0.0.1 :8265",
    "http://127.0.0.1%2f@attacker.invalid",
    "http://\u0127.0.0.1:8265",  # non-ASCII: each parser normalizes its own way
]


def test_the_two_parsers_disagree_on_the_first_address():
    """Why the shape of an address matters: the guard checked one host, requests connects to another."""
    assert urlsplit(CONFUSING[0]).hostname == "127.0.0.1"
    assert parse_url(CONFUSING[0]).host == "attacker.invalid"


@pytest.mark.parametrize("address", CONFUSING)
def test_an_address_the_parsers_could_read_differently_is_refused(address):
    with pytest.raises(PipelineError, match=r"is not a plain dashboard address: .*http\(s\)://HOST\[:PORT\]") as refused:
        jobs.dashboard_url(address)
    assert "\n" not in str(refused.value)
    with pytest.raises(PipelineError, match="not a plain dashboard address"):
        jobs.check_transport(address, TOKEN)  # the guard on its own reads the address the same strict way
    with pytest.raises(PipelineError, match="not a plain dashboard address"):
        jobs.check_transport(address, TOKEN, insecure=True)  # --insecure is about http, not about the host


def test_user_info_is_named():
    with pytest.raises(PipelineError, match=r"'@' '\\\\' \(@: user info before the host\)"):
        jobs.dashboard_url(CONFUSING[0])


@pytest.mark.usefixtures("token_env")
@pytest.mark.parametrize("address", CONFUSING[:3])
def test_the_cli_refuses_it_before_any_connection(address, no_network, capsys):
    assert main(["status", "raysubmit_x", "--address", address]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a plain dashboard address" in err and err.count("\n") == 1
    assert no_network == []


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("HTTP://127.0.0.1:8265", "http://127.0.0.1:8265"),  # the Ray client expects the scheme in lower case
        ("http://[::1]:8265", "http://[::1]:8265"),
        ("https://ray.example.com/dashboard/", "https://ray.example.com/dashboard"),
        ("ray-head_1.internal", "http://ray-head_1.internal:8265"),
    ],
)
def test_plain_addresses_still_pass(address, url):
    assert jobs.dashboard_url(address) == url


# --------------------------------------------------------------------------- #
# A proxy from the environment would carry the token in clear text
# --------------------------------------------------------------------------- #

LOOPBACK = "http://127.0.0.1:8265"


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"HTTP_PROXY": "http://proxy.invalid:3128"}, True),
        ({"http_proxy": "http://proxy.invalid:3128"}, True),
        ({"ALL_PROXY": "socks5h://proxy.invalid:1080"}, True),
        ({"HTTP_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "127.0.0.1"}, False),  # bypassed
        ({"HTTP_PROXY": "http://proxy.invalid:3128", "no_proxy": "*"}, False),
        ({"HTTP_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "localhost"}, True),  # another host
        ({"HTTPS_PROXY": "http://proxy.invalid:3128"}, False),  # for https URLs only
    ],
)
def test_a_proxy_that_would_carry_the_token_over_http_is_refused(env, refused, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if refused:
        with pytest.raises(PipelineError, match=r"through the proxy .*proxy.invalid.*NO_PROXY=127.0.0.1.*https.*--insecure"):
            jobs.check_transport(LOOPBACK, TOKEN)
    else:
        jobs.check_transport(LOOPBACK, TOKEN)
    jobs.check_transport(LOOPBACK, TOKEN, insecure=True)  # the user said so
    jobs.check_transport(LOOPBACK, None)  # no secret to leak
    jobs.check_transport("https://127.0.0.1:8265", TOKEN)  # requests tunnels https through a proxy


def test_the_decision_is_the_one_requests_makes(monkeypatch):
    import requests

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    session = requests.Session()
    chosen = session.merge_environment_settings(LOOPBACK + "/api/version", {}, None, None, None)["proxies"]
    assert requests.utils.select_proxy(LOOPBACK + "/api/version", chosen) == "http://proxy.invalid:3128"
    assert jobs.proxy_for(LOOPBACK) == "http://proxy.invalid:3128"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    chosen = session.merge_environment_settings(LOOPBACK + "/api/version", {}, None, None, None)["proxies"]
    assert requests.utils.select_proxy(LOOPBACK + "/api/version", chosen) is None
    assert jobs.proxy_for(LOOPBACK) is None


def test_the_proxy_s_password_is_not_repeated(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://me:hunter2@proxy.invalid:3128")
    with pytest.raises(PipelineError, match=r"proxy http://proxy.invalid:3128 ") as refused:
        jobs.check_transport(LOOPBACK, TOKEN)
    assert "hunter2" not in str(refused.value)


@pytest.mark.usefixtures("token_env")
def test_status_through_a_proxy_is_refused_before_any_connection(no_network, monkeypatch, capsys):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert main(["status", "raysubmit_x", "--address", LOOPBACK]) == 2
    assert "NO_PROXY=127.0.0.1" in capsys.readouterr().err
    assert no_network == []
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert main(["status", "raysubmit_x", "--address", LOOPBACK]) == 2
    assert "Cannot reach the Ray dashboard" in capsys.readouterr().err  # it tried, directly: the guard let it
    assert no_network == [("127.0.0.1", 8265)]
