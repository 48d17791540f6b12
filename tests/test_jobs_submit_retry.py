"""`pipelines submit` right after `ray start --head`: the job server's "No available agent" answers are waited out.

A small job server on 127.0.0.1 answers Ray's job API the way Ray 2.60's does (the calls
JobSubmissionClient makes: the version check, the package exists check and upload of the working_dir,
POST /api/jobs/), and refuses the first submissions with the HTTP 500 a head whose job agent has not
registered yet sends.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.cluster import jobs
from pipelines.errors import PipelineError

NOT_READY = "No available agent to submit job, please try again later."


@dataclass
class FakeJobServer:
    refusals: int  # how many submissions get the 500 before one is accepted
    refusal: str = NOT_READY  # what the 500 says
    url: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)
    packages: set[str] = field(default_factory=set)
    submitted: list[dict] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)
    upload_limit: int | None = None  # the largest package body taken (Ray's job server: 100 MiB), as aiohttp refuses


def handler_for(server: FakeJobServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def answer(self, status: int, body: str | dict, content_type: str = "application/json") -> None:
            data = (json.dumps(body) if isinstance(body, dict) else body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:
            server.requests.append(("GET", self.path))
            if self.path == "/api/version":
                self.answer(200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "fake"})
            elif self.path.startswith("/api/packages/"):
                self.answer(200 if self.path in server.packages else 404, "", "text/plain")
            else:
                self.answer(404, "not found", "text/plain")

        def do_PUT(self) -> None:
            server.requests.append(("PUT", self.path))
            size = len(self.body())
            if server.upload_limit is not None and size > server.upload_limit:
                self.answer(413, f"Maximum request body size {server.upload_limit} exceeded, actual body size {size}",
                            "text/plain")
                return
            server.packages.add(self.path)
            self.answer(200, "", "text/plain")

        def do_POST(self) -> None:
            server.requests.append(("POST", self.path))
            request = json.loads(self.body())
            server.authorization.append(self.headers.get("Authorization"))
            if self.path != "/api/jobs/":
                self.answer(404, "not found", "text/plain")
            elif server.refusals > 0:
                server.refusals -= 1
                self.answer(500, server.refusal, "text/plain")
            else:
                server.submitted.append(request)
                self.answer(200, {"job_id": "raysubmit_fake", "submission_id": "raysubmit_fake"})

    return Handler


@pytest.fixture
def job_server(request) -> Iterator[FakeJobServer]:
    fake = FakeJobServer(*request.param)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(fake))
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield fake
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "project"
    (root / "pipelines").mkdir(parents=True)
    (root / "pipelines" / "__init__.py").write_text("")
    (root / "jobs").mkdir()
    (root / "jobs" / "job.yaml").write_text("name: fake\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "local-token")
    return root


@pytest.mark.parametrize("job_server", [(3,)], indirect=True)
def test_submit_waits_out_a_job_server_with_no_agent_yet(job_server, project, caplog):
    with caplog.at_level(logging.INFO, logger="pipelines.cluster.jobs"):
        job_id = jobs.submit(project / "jobs" / "job.yaml", job_server.url, project_root=project, retry_every_s=0)
    assert job_id == "raysubmit_fake"
    assert [r for r in job_server.requests if r[0] == "POST"] == [("POST", "/api/jobs/")] * 4
    assert job_server.submitted[0]["entrypoint"] == "python -m pipelines run jobs/job.yaml"
    assert job_server.authorization == ["Bearer local-token"] * 4
    assert len([r for r in job_server.requests if r[0] == "PUT"]) == 1  # the project is uploaded once
    waiting = [r.getMessage() for r in caplog.records if "no job agent ready yet" in r.getMessage()]
    assert waiting == [f"The Ray job server at {job_server.url} has no job agent ready yet (a head that just "
                       "started); asking again for up to 60 s"]


@pytest.mark.parametrize("job_server", [(10**6,)], indirect=True)
def test_submit_gives_up_after_its_time_with_one_line(job_server, project):
    with pytest.raises(PipelineError, match=r"still had no job agent ready after 0 s .* `ray status`") as raised:
        jobs.submit(project / "jobs" / "job.yaml", job_server.url, project_root=project, retry_for_s=0.05,
                    retry_every_s=0)
    assert "\n" not in str(raised.value)
    assert job_server.submitted == []


@pytest.mark.parametrize("job_server", [(1, "Traceback (most recent call last): ... KeyError: 'x'")], indirect=True)
def test_other_server_errors_are_not_retried(job_server, project):
    """A submission the server refuses for another reason fails at once, as before."""
    with pytest.raises(PipelineError, match="refused the request.*500"):
        jobs.submit(project / "jobs" / "job.yaml", job_server.url, project_root=project, retry_every_s=0)
    assert [r for r in job_server.requests if r[0] == "POST"] == [("POST", "/api/jobs/")]


@pytest.mark.parametrize("job_server", [(0, NOT_READY, "", [], set(), [], [], 64)], indirect=True)
def test_an_upload_over_the_job_servers_limit_says_what_to_leave_out(job_server, project):
    """Ray's job server takes a package of at most 100 MiB; one over it was Ray's raw `Request failed with status code
    413: Maximum request body size … exceeded` after `refused the request`, saying nothing of what to do (a tester's
    184 MiB input file). Now one line says the upload is too large and how to make it smaller."""
    (project / "jobs" / "big.jsonl").write_bytes(bytes(range(256)) * 64)  # zips to more than 64 bytes
    with pytest.raises(PipelineError, match=r"refused the project's upload as too large \(.*413.*Maximum request body "
                                            r"size 64 exceeded.*\.gitignore or \.rayignore") as raised:
        jobs.submit(project / "jobs" / "job.yaml", job_server.url, project_root=project, retry_every_s=0)
    assert "\n" not in str(raised.value)
    assert job_server.submitted == []
