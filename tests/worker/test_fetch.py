"""The SSRF guard and the capped streaming download, against local servers over real sockets."""

from __future__ import annotations

import socket

import pytest
from werkzeug import Response

from tests.fixtures.services import assert_no_connection
from worker.fetch import (
    FetchError,
    FetchRefused,
    HostPolicy,
    SafeFetcher,
    SourceGone,
    TooLarge,
)

LOCAL = ["127.0.0.1"]


def fake_resolver(mapping: dict[str, str]):
    """A resolver answering fixed addresses (what a hostile DNS server could answer)."""

    def resolve(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (mapping.get(host, host), port))]

    return resolve


# --- the policy alone ----------------------------------------------------------------------------


def test_policy_matches_exact_names_and_suffixes():
    policy = HostPolicy([".klingai.com", "cdn.example.org", "127.0.0.1"])
    assert policy.host_allowed("klingai.com")
    assert policy.host_allowed("s21-kling.klingai.com")
    assert policy.host_allowed("A.KlingAI.com.")
    assert not policy.host_allowed("evilklingai.com")
    assert not policy.host_allowed("klingai.com.evil.net")
    assert policy.host_allowed("cdn.example.org")
    assert not policy.host_allowed("x.cdn.example.org")
    assert not policy.host_allowed("example.org")
    assert policy.host_allowed("127.0.0.1")
    assert not policy.host_allowed("127.0.0.2")


def test_policy_addresses():
    policy = HostPolicy([".klingai.com", "127.0.0.1", "internal.test", "169.254.169.254"])
    assert policy.address_allowed("a.klingai.com", "8.8.8.8")
    assert policy.address_allowed("a.klingai.com", "2001:4860:4860::8888")
    for private in ("127.0.0.1", "10.0.0.5", "192.168.1.1", "172.16.0.1", "100.64.0.1", "::1", "fc00::1"):
        assert not policy.address_allowed("a.klingai.com", private), private
    assert not policy.address_allowed("a.klingai.com", "::ffff:127.0.0.1")  # IPv4-mapped loopback
    # Listed by exact name: private addresses are allowed for that host only.
    assert policy.address_allowed("127.0.0.1", "127.0.0.1")
    assert policy.address_allowed("internal.test", "10.0.0.5")
    # Link-local (cloud metadata), multicast and unspecified: never, even when listed.
    assert not policy.address_allowed("169.254.169.254", "169.254.169.254")
    assert not policy.address_allowed("internal.test", "fe80::1")
    assert not policy.address_allowed("internal.test", "224.0.0.1")
    assert not policy.address_allowed("internal.test", "0.0.0.0")


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::1",  # 6to4 carrying 127.0.0.1
        "2002:a00:5::1",  # 6to4 carrying 10.0.0.5
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::ffff:a9fe:a9fe",  # IPv4-mapped metadata
    ],
)
def test_ipv6_forms_carrying_a_private_ipv4_are_refused(address: str) -> None:
    assert not HostPolicy([".klingai.com"]).address_allowed("a.klingai.com", address)


def test_metadata_addresses_are_refused_by_address_even_when_listed() -> None:
    listed = HostPolicy(["100.100.100.200", "metadata.test"])
    assert not listed.address_allowed("100.100.100.200", "100.100.100.200")
    assert not listed.address_allowed("metadata.test", "fd00:ec2::254")
    # An IPv6 form of a public IPv4 address stays allowed.
    assert HostPolicy([".klingai.com"]).address_allowed("a.klingai.com", "64:ff9b::808:808")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/x.png",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
        "http:///nohost",
        "http://127.0.0.1:99999/",
    ],
)
def test_bad_urls_are_refused(url):
    with SafeFetcher(LOCAL) as fetcher, pytest.raises(FetchRefused):
        fetcher.open(url)


# --- over the network ----------------------------------------------------------------------------


def test_fetches_an_allowed_url(source_server):
    source_server.expect_request("/img.png").respond_with_data(b"x" * 1000, content_type="image/png")
    with SafeFetcher(LOCAL) as fetcher, fetcher.open(source_server.url_for("/img.png")) as body:
        assert body.read() == b"x" * 1000
        assert body.bytes_read == 1000


def test_host_outside_the_allowlist_is_never_contacted(silent_listener):
    port = silent_listener.getsockname()[1]
    with SafeFetcher(["images.example.com"]) as fetcher, pytest.raises(FetchRefused, match="allowlist"):
        fetcher.open(f"http://127.0.0.1:{port}/x.png")
    assert_no_connection(silent_listener)


def test_allowed_name_resolving_to_loopback_is_never_contacted(silent_listener):
    """A suffix entry allows the name, not a private address behind it (not listed by exact name)."""
    port = silent_listener.getsockname()[1]
    with SafeFetcher([".localhost"]) as fetcher, pytest.raises(FetchRefused, match="refused address"):
        fetcher.open(f"http://localhost:{port}/x.png")
    assert_no_connection(silent_listener)


def test_dns_answer_pointing_inside_is_refused(silent_listener):
    port = silent_listener.getsockname()[1]
    resolver = fake_resolver({"img.cdn.test": "127.0.0.1"})
    with SafeFetcher([".cdn.test"], resolver=resolver) as fetcher, pytest.raises(FetchRefused):
        fetcher.open(f"http://img.cdn.test:{port}/x.png")
    assert_no_connection(silent_listener)


def test_the_vetted_address_is_the_one_connected_to(source_server):
    """The name is resolved once, by us: the connection goes to the address that passed the check."""
    source_server.expect_request("/a.png").respond_with_data(b"ok")
    calls: list[str] = []

    def resolver(host, port, *args, **kwargs):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    url = f"http://img.internal.test:{source_server.port}/a.png"
    with SafeFetcher(["img.internal.test"], resolver=resolver) as fetcher, fetcher.open(url) as body:
        assert body.read() == b"ok"
    assert calls == ["img.internal.test"]


def test_metadata_address_never_gets_a_connection(monkeypatch):
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def recording_connect(self, address):
        attempts.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    meta = fake_resolver({"meta.cdn.test": "169.254.169.254"})
    # Not listed at all, listed by exact address, or reached through an allowed name: all refused.
    with SafeFetcher([".cdn.test", "169.254.169.254"], resolver=meta) as fetcher:
        for url in (
            "http://169.254.169.254/latest/meta-data/",
            "http://meta.cdn.test/latest/meta-data/",
        ):
            with pytest.raises(FetchRefused):
                fetcher.open(url)
    with SafeFetcher(LOCAL) as fetcher, pytest.raises(FetchRefused):
        fetcher.open("http://169.254.169.254/latest/meta-data/")
    assert attempts == []


def test_redirects_are_followed_and_each_hop_checked(source_server, silent_listener):
    source_server.expect_request("/start").respond_with_response(
        Response(status=302, headers={"Location": "/final.png"})
    )
    source_server.expect_request("/final.png").respond_with_data(b"final")
    with SafeFetcher(LOCAL) as fetcher:
        with fetcher.open(source_server.url_for("/start")) as body:
            assert body.read() == b"final"
            assert body.url.endswith("/final.png")

        port = silent_listener.getsockname()[1]
        for target in (
            "http://169.254.169.254/latest/meta-data/iam",
            f"http://localhost:{port}/x.png",  # not allowed (only 127.0.0.1 is)
            "file:///etc/passwd",
        ):
            source_server.clear()
            source_server.expect_request("/hop").respond_with_response(
                Response(status=307, headers={"Location": target})
            )
            with pytest.raises(FetchRefused):
                fetcher.open(source_server.url_for("/hop"))
            assert len(source_server.log) == 1  # only the first hop was requested
    assert_no_connection(silent_listener)


def test_redirect_limit(source_server):
    for i in range(7):
        source_server.expect_request(f"/r{i}").respond_with_response(
            Response(status=301, headers={"Location": f"/r{i + 1}"})
        )
    source_server.expect_request("/r7").respond_with_data(b"end")
    with SafeFetcher(LOCAL, max_redirects=5) as fetcher:
        with pytest.raises(FetchRefused, match="redirects"):
            fetcher.open(source_server.url_for("/r0"))
        with fetcher.open(source_server.url_for("/r2")) as body:  # exactly 5 redirects is fine
            assert body.read() == b"end"


@pytest.mark.parametrize("status", [403, 404, 410])
def test_gone_statuses_mean_source_gone(source_server, status):
    source_server.expect_request("/old.png").respond_with_data(b"expired", status=status)
    with SafeFetcher(LOCAL) as fetcher, pytest.raises(SourceGone) as info:
        fetcher.open(source_server.url_for("/old.png"))
    assert info.value.status == status
    assert not info.value.retryable


@pytest.mark.parametrize("status", [500, 503, 429])
def test_other_statuses_are_retryable_fetch_errors(source_server, status):
    source_server.expect_request("/busy.png").respond_with_data(b"busy", status=status)
    with SafeFetcher(LOCAL) as fetcher, pytest.raises(FetchError) as info:
        fetcher.open(source_server.url_for("/busy.png"))
    assert info.value.retryable


def test_announced_size_over_the_cap_is_refused_before_reading(source_server):
    source_server.expect_request("/big.png").respond_with_data(b"y" * 2048)
    with SafeFetcher(LOCAL, max_bytes=1024) as fetcher, pytest.raises(TooLarge):
        fetcher.open(source_server.url_for("/big.png"))


def test_streamed_body_over_the_cap_is_cut_off(source_server):
    def chunks():
        for _ in range(64):
            yield b"z" * 1024

    # No Content-Length: only counting while streaming can catch this body.
    source_server.expect_request("/stream.png").respond_with_handler(lambda request: Response(chunks()))
    with SafeFetcher(LOCAL, max_bytes=10_000) as fetcher:
        body = fetcher.open(source_server.url_for("/stream.png"))
        with body, pytest.raises(TooLarge):
            while body.read(4096):
                pass
        assert body.bytes_read <= 10_000 + 1
        # Exactly at the cap is fine.
        with fetcher.open(source_server.url_for("/stream.png"), max_bytes=64 * 1024) as ok:
            assert len(ok.read()) == 64 * 1024


def test_read_timeout_is_a_retryable_error(silent_listener):
    """The listener accepts at the TCP level (backlog) but never answers: the read must time out."""
    port = silent_listener.getsockname()[1]
    with SafeFetcher(LOCAL, read_timeout=0.2) as fetcher, pytest.raises(FetchError):
        fetcher.open(f"http://127.0.0.1:{port}/slow.png")


def test_connection_refused_is_a_retryable_error():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with SafeFetcher(LOCAL) as fetcher, pytest.raises(FetchError):
        fetcher.open(f"http://127.0.0.1:{port}/gone.png")


def test_environment_proxies_are_ignored(source_server, silent_listener, monkeypatch):
    proxy = f"http://127.0.0.1:{silent_listener.getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    source_server.expect_request("/direct.png").respond_with_data(b"direct")
    with SafeFetcher(LOCAL) as fetcher, fetcher.open(source_server.url_for("/direct.png")) as body:
        assert body.read() == b"direct"
    assert_no_connection(silent_listener)
