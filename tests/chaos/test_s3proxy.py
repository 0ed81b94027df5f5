"""The S3 fault proxy: passes requests through to moto, answers 503 while failing, keeps the data."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from chaos.s3proxy import S3FaultProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[S3FaultProxy]:
    p = S3FaultProxy(s3_endpoint).start()
    yield p
    p.close()


def client(endpoint: str) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing-access-key",
        aws_secret_access_key="testing-secret-key",
        region_name="us-east-1",
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


def test_passes_through_then_refuses_then_recovers(proxy: S3FaultProxy, s3_bucket: str) -> None:
    s3 = client(proxy.url)
    body = bytes(range(256)) * 1000
    s3.put_object(Bucket=s3_bucket, Key="a/b.png", Body=body)  # type: ignore[attr-defined]
    assert s3.head_object(Bucket=s3_bucket, Key="a/b.png")["ContentLength"] == len(body)  # type: ignore[attr-defined]

    proxy.failing.set()
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=s3_bucket, Key="a/b.png")  # type: ignore[attr-defined]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert proxy.refused >= 1

    proxy.failing.clear()
    assert s3.get_object(Bucket=s3_bucket, Key="a/b.png")["Body"].read() == body  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 1000\r\n\r\n" + b"x" * 10,
        b"Transfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 10,
    ],
    ids=["content-length", "chunked"],
)
def test_a_request_cut_short_never_reaches_the_store(
    proxy: S3FaultProxy, s3_bucket: str, framing: bytes
) -> None:
    # What a worker SIGKILLed mid-PUT leaves: headers, part of the body, then a closed socket.
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"PUT /{s3_bucket}/cut/short.png HTTP/1.1\r\nHost: {host}\r\n".encode() + framing)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""  # no answer: the proxy dropped the request
    s3 = client(proxy.url)
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=s3_bucket, Key="cut/short.png")  # type: ignore[attr-defined]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
