"""How long a run takes to read its output's commit records on an object store with a network's latency.

    python benchmarks/commit_records.py                      # 500 records, 20 ms a request
    python benchmarks/commit_records.py --records 2000 --latency 0.05

An S3 API (moto, the tests' server, on 127.0.0.1) holds ``--records`` commit records; the driver reads them
through a loopback proxy that holds each request ``--latency`` seconds, as a network round trip to a store does,
with ``OutputDir.commits`` (16 at a time on an object store) and, to compare, one after the other. Prints one
JSON line. Nothing leaves 127.0.0.1. Needs the test extra (moto, boto3).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BUCKET = "bench-records"


def delaying_proxy(target_port: int, latency: float) -> int:
    """A loopback TCP proxy that holds each chunk the client sends for ``latency`` seconds; its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(source: socket.socket, sink: socket.socket, hold: bool) -> None:
        try:
            while data := source.recv(65536):
                if hold:
                    time.sleep(latency)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve() -> None:
        while True:
            client, _ = listener.accept()
            server = socket.create_connection(("127.0.0.1", target_port))
            threading.Thread(target=pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=pipe, args=(server, client, False), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds each request is held")
    args = parser.parse_args()

    from s3_server import start

    server = start([BUCKET])
    os.environ.update(server.aws_env())
    client = server.client()
    for n in range(args.records):
        key = f"k{n:06d}"
        record = {"shard": key, "input": {"uri": f"s3://in/{key}.jsonl", "size": 1}, "spec_hash": "h",
                  "model": {"name": "m"}, "rows_in": 10, "rows": 10, "errors": 0, "files": [f"part-{key}.parquet"]}
        client.put_object(Bucket=BUCKET, Key=f"out/_commits/{key}.json", Body=json.dumps(record).encode())
    port = urlparse(server.endpoint).port
    assert port is not None
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{delaying_proxy(port, args.latency)}"

    from pipelines.output.commit import OutputDir
    from pipelines.output.records import CommitRecord

    output = OutputDir(f"s3://{BUCKET}/out")
    start_at = time.perf_counter()
    together = output.commits()
    at_once = time.perf_counter() - start_at
    names = [f"_commits/k{n:06d}.json" for n in range(args.records)]
    start_at = time.perf_counter()
    alone = [CommitRecord.parse(output.read_json(name)) for name in names]
    one_by_one = time.perf_counter() - start_at
    assert len(together) == len([r for r in alone if r is not None]) == args.records
    print(json.dumps({"records": args.records, "latency_s": args.latency, "commits_s": round(at_once, 2),
                      "one_after_the_other_s": round(one_by_one, 2)}))
    server.stop()


if __name__ == "__main__":
    main()
