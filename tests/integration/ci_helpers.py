"""Local fakes of GitHub's and GitLab's comment REST APIs, for the tests of `fleet ci comment`.

`FakeForge` is a real HTTP server (http.server, one thread per request) on a free 127.0.0.1 port that serves
what `fleet ci comment` uses: GitHub's issue comments (`GET/POST /repos/{owner}/{repo}/issues/{n}/comments`,
paginated by Link headers; `PATCH /repos/{owner}/{repo}/issues/comments/{id}`) and GitLab's merge request notes
(`GET/POST /projects/{id}/merge_requests/{iid}/notes`, paginated by X-Next-Page; `PUT …/notes/{id}`). It checks
the token header (401 otherwise), keeps the comments in memory, records every request, and can be told to answer
the next requests with given statuses (`fail_next`) to test retries and refusals; `static` answers further GETs
(GitLab's merge request, pipeline, job and artifact lookups of the apply job). Used by
tests/integration/test_ci_*.py; `with FakeForge(...) as forge:` stops it.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeForge:
    token: str
    per_page: int = 100  # the page size the fake uses whatever the client asks (small: pagination tests)
    comments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # thread -> comments, oldest first
    requests: list[Recorded] = field(default_factory=list)
    failures: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    static: dict[str, Any] = field(default_factory=dict)  # path -> what GET answers (JSON data, or bytes as is)
    next_id: int = 1000
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> FakeForge:
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _go(self) -> None:
                forge._handle(self)

            do_GET = do_POST = do_PATCH = do_PUT = _go

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail_next(self, status: int, headers: dict[str, str] | None = None, message: str = "") -> None:
        """Answer the next request (that passes the token check) with `status`."""
        self.failures.append((status, headers or {}, message))

    def add(self, thread: str, body: str, **extra: Any) -> dict[str, Any]:
        """A comment someone else wrote."""
        with self.lock:
            self.next_id += 1
            c = {"id": self.next_id, "body": body, **extra}
            self.comments.setdefault(thread, []).append(c)
            return c

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method != "GET"]

    # ------------------------------------------------------------------------------------------------ serving

    def _send(self, h: BaseHTTPRequestHandler, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(data).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(raw)

    def _authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {self.token}" or self.token in (
            headers.get("private-token"), headers.get("job-token"))

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        headers = {k.lower(): v for k, v in h.headers.items()}
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.lock:
            self.requests.append(Recorded(h.command, parts.path, headers, body))
            if not self._authorized(headers):
                self._send(h, 401, {"message": "Bad credentials"})
                return
            if self.failures:
                status, extra, message = self.failures.pop(0)
                self._send(h, status, {"message": message or f"fake {status}"}, extra)
                return
            self._route(h, h.command, parts.path, query, body)

    def _route(self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, str], body: Any) -> None:
        if method == "GET" and path in self.static:
            answer = self.static[path]
            if isinstance(answer, bytes):
                h.send_response(200)
                h.send_header("Content-Length", str(len(answer)))
                h.end_headers()
                h.wfile.write(answer)
            else:
                self._send(h, 200, answer)
            return
        gh_list = re.fullmatch(r"/repos/([^/]+/[^/]+)/issues/(\d+)/comments", path)
        gh_one = re.fullmatch(r"/repos/([^/]+/[^/]+)/issues/comments/(\d+)", path)
        gl_list = re.fullmatch(r"/api/v4/projects/([^/]+)/merge_requests/(\d+)/notes", path)
        gl_one = re.fullmatch(r"/api/v4/projects/([^/]+)/merge_requests/(\d+)/notes/(\d+)", path)
        if gh_list or gl_list:
            m = gh_list or gl_list
            assert m is not None
            thread = f"{m.group(1)}#{m.group(2)}"
            items = self.comments.setdefault(thread, [])
            if method == "GET":
                page = int(query.get("page", "1"))
                chunk = items[(page - 1) * self.per_page: page * self.per_page]
                more = page * self.per_page < len(items)
                headers = {}
                if more and gh_list:
                    headers["Link"] = f'<{self.url}{path}?per_page={self.per_page}&page={page + 1}>; rel="next"'
                if more and gl_list:
                    headers["X-Next-Page"] = str(page + 1)
                self._send(h, 200, [self._view(c, thread, bool(gh_list)) for c in chunk], headers)
                return
            if method == "POST" and isinstance(body, dict) and isinstance(body.get("body"), str):
                self.next_id += 1
                c = {"id": self.next_id, "body": body["body"]}
                items.append(c)
                self._send(h, 201, self._view(c, thread, bool(gh_list)))
                return
        if (gh_one and method == "PATCH") or (gl_one and method == "PUT"):
            cid = int((gh_one or gl_one).group(3 if gl_one else 2))  # type: ignore[union-attr]
            for thread, items in self.comments.items():
                for c in items:
                    if c["id"] == cid and not c.get("locked"):
                        c["body"] = body["body"]
                        self._send(h, 200, self._view(c, thread, bool(gh_one)))
                        return
            self._send(h, 404, {"message": "Not Found"})
            return
        self._send(h, 404, {"message": "Not Found"})

    def _view(self, c: dict[str, Any], thread: str, github: bool) -> dict[str, Any]:
        out = {"id": c["id"], "body": c["body"]}
        if github:
            out["html_url"] = f"https://github.example/{thread.replace('#', '/pull/')}#issuecomment-{c['id']}"
        else:
            out["system"] = bool(c.get("system"))
        return out
