"""Inputs on S3 for the tests: files copied to the local endpoint of the `s3_endpoint` fixture."""

from __future__ import annotations

from pathlib import Path


def upload_to_s3(files: list[str], bucket: str, prefix: str) -> list[str]:
    """Copy local files to s3://bucket/prefix/<name> (through the endpoint of `s3_endpoint`); their URIs."""
    import os

    from pyarrow import fs

    # the constructor, unlike simcli's reading through fs.FileSystem.from_uri, does not read AWS_ENDPOINT_URL
    s3 = fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    s3.create_dir(bucket)
    uris = []
    for path in files:
        key = f"{bucket}/{prefix}/{Path(path).name}"
        with s3.open_output_stream(key) as out:
            out.write(Path(path).read_bytes())
        uris.append(f"s3://{key}")
    return uris
