"""A local S3 API for tests: moto's threaded server on 127.0.0.1, with IAM users and request signing on.

Authentication is switched on once the users exist, so the server checks every request's signature
and the user's policy the way S3 does: a wrong key, a read-only user or a missing bucket get the
answers they get from AWS. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
#: A reader may read and list, not write or delete. AWS checks HeadObject as s3:GetObject and ListObjectsV2 as
#: s3:ListBucket; moto 5.2.6 checks them under their operations' own names (s3:HeadObject, s3:ListObjectsV2), so that
#: a policy of the real actions alone denied the reader every read. Both names are allowed: neither writes.
READ_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Resource": "*",
                   "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadObject", "s3:ListObjectsV2"]}],
}
#: A writer may do all but delete objects: its write probe is written and stays.
WRITE_ONLY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Resource": "*", "Action": "s3:*"},
                  {"Effect": "Deny", "Resource": "*", "Action": "s3:DeleteObject"}],
}
REGION = "us-east-1"
#: Environment variables that would point a client at real AWS or at another configuration.
FOREIGN = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN",
           "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


@dataclass
class S3Server:
    """A running moto server: its endpoint, users (name → (key id, secret)) and buckets."""

    endpoint: str
    users: dict[str, tuple[str, str]] = field(default_factory=dict)
    _server: object = None

    def aws_env(self, user: str | None = "admin") -> dict[str, str]:
        """The AWS variables a user exports: ``user``'s keys (none for None) and the endpoint; no profile, no
        instance metadata (so no client looks beyond 127.0.0.1)."""
        env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        if user is not None:
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = self.users[user]
        return env

    def env(self, user: str | None = "admin", **more: str) -> dict[str, str]:
        """This process's environment with :meth:`aws_env` (and ``more``) in place of its own AWS settings."""
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN and not k.startswith("AWS_ACCESS_KEY")}
        env.update(self.aws_env(user))
        env.update(more)
        return env

    def client(self, user: str = "admin"):
        import boto3

        key, secret = self.users[user]
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=key, aws_secret_access_key=secret)

    def upload(self, bucket: str, prefix: str, folder: Path) -> None:
        """Every file under ``folder`` to ``s3://bucket/prefix/<its path under folder>``."""
        client = self.client()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")

    def keys(self, bucket: str, prefix: str) -> list[str]:
        """Every object key under ``prefix/``, relative to it: what a reader listing the prefix sees."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
        return sorted(item["Key"][len(prefix) + 1 :] for page in pages for item in page.get("Contents", []))

    def credentials_file(self, path: Path, profile: str, user: str = "admin") -> Path:
        """An AWS shared credentials file holding ``user``'s keys under ``[profile]``."""
        key, secret = self.users[user]
        path.write_text(f"[{profile}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
        return path

    def stop(self) -> None:
        self._server.stop()  # type: ignore[attr-defined]


def start(buckets: list[str]) -> S3Server:
    """Start moto on a free port of 127.0.0.1, make an ``admin``, a read-only ``reader`` and a ``writer`` that may not delete, then turn auth on."""
    import logging

    import boto3
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Server(f"http://{host}:{port}", _server=server)
    setup = {"endpoint_url": s3.endpoint, "region_name": REGION, "aws_access_key_id": "setup",
             "aws_secret_access_key": "setup"}
    iam = boto3.client("iam", **setup)
    for user, policy in (("admin", ADMIN_POLICY), ("reader", READ_POLICY), ("writer", WRITE_ONLY_POLICY)):
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        created = iam.create_access_key(UserName=user)["AccessKey"]
        s3.users[user] = (created["AccessKeyId"], created["SecretAccessKey"])
    for bucket in buckets:
        boto3.client("s3", **setup).create_bucket(Bucket=bucket)
    # From here on every request must be signed by a known user and allowed by its policy.
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    return s3
