"""Check that a DVC remote answers before a long push or pull, and name it when it does not.

DVC itself reports an unreachable S3 endpoint only after botocore's retries (about ten
seconds, per file batch), and a local remote folder that is absent (not mounted, nothing
pushed yet) as "missing cache files" without naming the remote. This check takes a second
and says which remote, which URL and which endpoint failed, and what to do:

    python -m lymphaug.remotes            # the default remote
    python -m lymphaug.remotes s3 && dvc pull -r s3
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lymphaug.common.errors import LymphaugError


class RemoteError(LymphaugError):
    """A DVC remote is missing, unreachable or refuses access."""


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    options: dict

    @property
    def endpoint(self) -> str | None:
        """S3 endpoint: the remote's endpointurl, else the AWS_ENDPOINT_URL* environment."""
        return (
            self.options.get("endpointurl")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )


def resolve(root: Path, name: str | None = None) -> Remote:
    """The named remote (or the default one) from the repository's merged DVC config."""
    from dvc.config import Config, ConfigError

    dvc_dir = Path(root) / ".dvc"
    if not dvc_dir.is_dir():
        raise RemoteError(f"{root}: not a DVC repository (no .dvc folder)")
    try:
        config = Config(dvc_dir=str(dvc_dir))
    except ConfigError as err:
        raise RemoteError(f"{dvc_dir}: unreadable DVC config: {err}") from None
    remotes = dict(config.get("remote", {}))
    name = name or config.get("core", {}).get("remote")
    if not name:
        raise RemoteError(f"{dvc_dir / 'config'}: no default remote; name one (local, s3)")
    if name not in remotes:
        raise RemoteError(f"no DVC remote named '{name}' (configured: {', '.join(remotes)})")
    options = dict(remotes[name])
    return Remote(name=name, url=str(options.pop("url")), options=options)


def check(root: Path, name: str | None = None, timeout: float = 5.0) -> str:
    """Raise RemoteError naming the remote unless it can be used; return a one-line summary."""
    remote = resolve(root, name)
    scheme = urlsplit(remote.url).scheme
    if scheme in ("", "file"):
        return _check_local(remote)
    if scheme == "s3":
        return _check_s3(remote, timeout)
    return f"DVC remote '{remote.name}' ({remote.url}): {scheme} remotes are not checked"


def _check_local(remote: Remote) -> str:
    path = Path(urlsplit(remote.url).path if remote.url.startswith("file:") else remote.url)
    if not path.is_dir():
        raise RemoteError(
            f"DVC remote '{remote.name}' ({path}) does not exist: nothing was pushed there "
            f"yet, or the share is not mounted here. Push from a machine that has the data "
            f"(dvc push -r {remote.name}), or point it at the shared folder: "
            f"dvc remote modify --local {remote.name} url <path>"
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise RemoteError(f"DVC remote '{remote.name}' ({path}) is not readable by this user")
    return f"DVC remote '{remote.name}' ({path}): ok"


def _check_s3(remote: Remote, timeout: float) -> str:
    try:
        import botocore.session
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError:
        raise RemoteError(
            f"DVC remote '{remote.name}' ({remote.url}) needs the s3 extra: "
            "pip install 'lymphaug[s3]'"
        ) from None
    parts = urlsplit(remote.url)
    bucket, endpoint = parts.netloc, remote.endpoint
    where = f"DVC remote '{remote.name}' ({remote.url}) at {endpoint or 'AWS S3'}"
    session = botocore.session.get_session()
    client = session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=remote.options.get("region") or os.environ.get("AWS_DEFAULT_REGION"),
        aws_access_key_id=remote.options.get("access_key_id"),
        aws_secret_access_key=remote.options.get("secret_access_key"),
        config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1}),
    )
    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise RemoteError(
            f"{where}: no credentials. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(in the compose stack: LYMPHAUG_S3_ACCESS_KEY / _SECRET_KEY in docker/.env)"
        ) from None
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            hint = "create it (compose: docker compose up minio-init)"
            raise RemoteError(f"{where}: bucket '{bucket}' does not exist; {hint}") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise RemoteError(f"{where}: access denied (HTTP {code}); check the keys") from None
        raise RemoteError(f"{where}: {err}") from None
    except BotoCoreError as err:  # connection refused, DNS, timeout, bad endpoint URL
        raise RemoteError(
            f"{where} is unreachable ({err}). Is the S3 service up (docker compose up -d "
            "minio), and AWS_ENDPOINT_URL right (host: http://127.0.0.1:9000)?"
        ) from None
    return f"{where}: bucket '{bucket}' reachable"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lymphaug.remotes", description=__doc__.splitlines()[0]
    )
    parser.add_argument("name", nargs="?", help="remote name (default: the default remote)")
    parser.add_argument("--root", default=".", help="repository root (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default: 5)")
    args = parser.parse_args(argv)
    try:
        print(check(Path(args.root), args.name, args.timeout))
    except RemoteError as err:
        print(f"lymphaug remotes: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
