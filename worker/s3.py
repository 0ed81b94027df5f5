"""boto3 S3 client and transfer settings used by the archiver, the readiness check and the tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from models.settings import Settings

MiB = 1024 * 1024


def make_s3_client(
    endpoint_url: str | None = None,
    region: str | None = None,
    *,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    max_attempts: int = 5,
    max_pool_connections: int = 16,
) -> S3Client:
    """An S3 client with timeouts, standard retries and checksums only where S3 requires them.

    Recent botocore sends CRC checksums by default, which MinIO/moto and other S3-compatible
    endpoints reject or mishandle on streamed uploads, hence `when_required`. A custom endpoint
    (MinIO, moto) gets path-style addressing so bucket names need no DNS.
    """
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )
    return client


def s3_client_from_settings(settings: Settings) -> S3Client:
    """The client for the configured endpoint; credentials come from boto3's usual chain."""
    return make_s3_client(settings.s3_endpoint_url, settings.aws_region)


def upload_transfer_config(
    chunk_bytes: int = 8 * MiB, max_chunks_in_memory: int = 3, single_put_bytes: int | None = None
) -> TransferConfig:
    """Multipart settings for streamed (non-seekable) uploads with bounded memory.

    Each part of a streamed body is buffered in memory while it uploads (boto3's default of 10 parts
    would allow 80 MiB per upload). The archiver keeps `max_chunks_in_memory` parts uploading while
    it reads the next one: memory ~= chunk_bytes * (max_chunks_in_memory + 1), 32 MiB by default.
    Three parts in flight rather than two keep the store busy while a part is read and hashed.

    A body that announces a size up to `single_put_bytes` (default: that same memory, so the peak
    does not grow) is held whole and sent in one PUT: one request instead of create, parts and
    complete, and one read of the source instead of two (a larger body is hashed first, so its
    multipart upload can carry the digest in its metadata).
    """
    config = TransferConfig(
        multipart_threshold=chunk_bytes * (max_chunks_in_memory + 1)
        if single_put_bytes is None
        else single_put_bytes,
        multipart_chunksize=chunk_bytes,
        max_concurrency=max_chunks_in_memory,
        use_threads=True,
        preferred_transfer_client="classic",
    )
    # Not an __init__ argument of boto3's TransferConfig, but honoured by s3transfer.
    config.max_in_memory_upload_chunks = max_chunks_in_memory
    return config
