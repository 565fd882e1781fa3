"""The remembered base URL: what Starlette's request.base_url says, per scheme, server, root path and Host."""

from __future__ import annotations

import itertools

from starlette.requests import Request

from service.gateway import deps


def request(host: str | None, scheme: str = "http", root_path: str = "", port: int = 8000) -> Request:
    headers = [(b"host", host.encode())] if host is not None else []
    return Request(
        {
            "type": "http",
            "scheme": scheme,
            "server": ("10.0.0.1", port),
            "root_path": root_path,
            "path": f"{root_path}/v1/jobs",
            "query_string": b"",
            "headers": headers,
        }
    )


def test_each_request_gets_starlettes_base_url_whatever_came_before():
    variants = itertools.product(
        ["a.example", "b.example:8080", None], ["http", "https"], ["", "/api"], [80, 8000]
    )
    requests = [request(*variant) for variant in variants]
    for each in requests + requests[::-1]:  # the second pass is answered from memory
        assert deps.request_base_url(each) == str(each.base_url)


def test_the_memory_is_bounded_by_hosts_clients_make_up():
    for number in range(3 * deps.REMEMBERED_BASE_URLS):
        deps.request_base_url(request(f"host-{number}.example"))
    assert len(deps._base_urls) <= deps.REMEMBERED_BASE_URLS
