"""The pull-request comment APIs of GitHub and GitLab, for `fleet ci comment` (fleet.cli.ci_cmds).

`Provider` is what the command needs: list the comments of one PR/MR, create one, update one in place.
`GitHub` speaks the REST API's issue comments (`GET/POST /repos/{repo}/issues/{n}/comments`,
`PATCH /repos/{repo}/issues/comments/{id}`), `GitLab` the merge request notes (`GET/POST
/projects/{id}/merge_requests/{iid}/notes`, `PUT …/notes/{note_id}`). Both go through httpx with a timeout and
`request`'s retry rule: a connection failure, a 5xx, a 429 and GitHub's rate-limit 403 are retried with backoff
(Retry-After or the rate limit's reset time when the API names one, capped); 401, 403 and 404 are refused at
once with what the token needs. The token travels only in a request header; no message ever holds it
(`_scrub`). `from_env` reads where each CI puts the PR, the repository, the API and the token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from fleet.errors import FleetError, TransientError, UsageError
from fleet.retry import Backoff, retrying_sync

try:  # the `ci` extra: `pip install 'fleet[ci]'`
    import httpx
except ImportError:  # pragma: no cover - reported when the command runs
    httpx = None  # type: ignore[assignment]

MAX_ATTEMPTS = 5
MAX_WAIT_S = 60.0
BACKOFF_S = 0.5
#: 0.5 s doubling (no jitter: one job, one client), or what Retry-After / the rate limit's reset says; at most 60 s
API_BACKOFF = Backoff(BACKOFF_S, MAX_WAIT_S, floor=1.0, honour_retry_after=True)


class _Again(Exception):
    """A failed attempt worth another: why (for the final message), and how long the API asked to wait."""

    def __init__(self, why: str, wait: float | None) -> None:
        super().__init__(why)
        self.retry_after = wait if wait is not None and wait >= 0 else None
MAX_PAGES = 100  # 10,000 comments: far more than a PR has


@dataclass(frozen=True)
class Comment:
    id: int
    body: str
    url: str = ""


class Provider(Protocol):
    name: str
    #: how the PR/MR is called in messages: "pull request #7 of acme/fleet"
    where: str

    def comments(self) -> list[Comment]: ...
    def create(self, body: str) -> Comment: ...
    def update(self, comment_id: int, body: str) -> Comment: ...


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


class Api:
    """One REST API: base URL, auth header, retries (see the module docstring)."""

    def __init__(self, provider: str, base_url: str, headers: Mapping[str, str], token: str, *,
                 timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                 transport: Any = None) -> None:
        if httpx is None:
            raise UsageError("`fleet ci comment` needs httpx", hint="pip install 'fleet[ci]'")
        self.provider = provider
        self.token = token
        self.sleep = sleep
        self.client = httpx.Client(base_url=base_url.rstrip("/") + "/", headers=dict(headers), timeout=timeout,
                                   transport=transport, follow_redirects=False)

    def close(self) -> None:
        self.client.close()

    def same_origin(self, url: str) -> bool:
        """True when `url` (a pagination link the API sent) is on the API's own host: the token goes nowhere else."""
        try:
            other = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            return False
        base = self.client.base_url
        return (other.scheme, other.host, other.port) == (base.scheme, base.host, base.port)

    def request(self, method: str, path: str, *, json_body: Any = None, params: Mapping[str, Any] | None = None,
                what: str = "") -> Any:
        """The response of `method path` (an httpx.Response) after the retries; FleetError when refused."""
        try:
            for attempt in retrying_sync(retry_on=_Again, attempts=MAX_ATTEMPTS, wait=API_BACKOFF, sleep=self.sleep):
                with attempt:
                    return self._once(method, path, json_body, params, what)
        except _Again as exc:
            raise TransientError(f"{self.provider} API kept failing ({MAX_ATTEMPTS} attempts) for {what}: {exc}",
                                 hint="retry the job later; nothing half-written is left (the comment is one "
                                      "request)") from None
        raise AssertionError("not reached")

    def _once(self, method: str, path: str, json_body: Any, params: Mapping[str, Any] | None, what: str) -> Any:
        """One request: the response, a refusal (FleetError), or _Again (worth another attempt)."""
        try:
            response = self.client.request(method, path.lstrip("/"), json=json_body, params=params)
        except httpx.TransportError as exc:
            raise _Again(f"{type(exc).__name__}: {_scrub(str(exc), self.token) or 'no answer'}", None) from None
        if response.status_code < 300:
            return response
        wait = self._retry_after(response)
        if wait is None:
            self._refuse(response, what)
        raise _Again(f"HTTP {response.status_code}: {self._message(response)}", wait)

    def _retry_after(self, response: Any) -> float | None:
        """Seconds the API asks to wait before retrying `response`; -1.0: retry after the backoff (API_BACKOFF);
        None when it is not worth retrying."""
        status = response.status_code
        headers = response.headers
        limited = status == 429 or (status == 403 and (headers.get("x-ratelimit-remaining") == "0"
                                                       or "retry-after" in headers
                                                       or "rate limit" in self._message(response).lower()))
        if not (status >= 500 or limited):
            return None
        if "retry-after" in headers:
            try:
                return max(0.0, float(headers["retry-after"]))
            except ValueError:
                pass
        reset = headers.get("x-ratelimit-reset") or headers.get("ratelimit-reset")
        if limited and reset:
            try:
                return max(0.0, float(reset) - time.time())
            except ValueError:
                pass
        return -1.0

    def _message(self, response: Any) -> str:
        try:
            data = response.json()
        except (ValueError, UnicodeDecodeError):
            data = None
        text = ""
        if isinstance(data, dict):
            text = str(data.get("message") or data.get("error") or "")
        if not text:
            text = response.reason_phrase or response.text[:200]
        return _scrub(" ".join(text.split())[:300], self.token)

    def _refuse(self, response: Any, what: str) -> None:
        status = response.status_code
        message = self._message(response)
        token = "GITHUB_TOKEN" if self.provider == "GitHub" else "GITLAB_TOKEN (or CI_JOB_TOKEN)"
        if status == 401:
            raise FleetError(f"{self.provider} refused the token (401 {message}) for {what}",
                             hint=f"set {token} to a valid token; it may have expired or been revoked")
        if status == 403:
            need = ("`permissions: pull-requests: write` for the job's GITHUB_TOKEN" if self.provider == "GitHub"
                    else "a project access token with the api scope and the Reporter role or more in GITLAB_TOKEN")
            raise FleetError(f"{self.provider} forbids this token to write comments (403 {message}) for {what}",
                             hint=f"give it {need}")
        if status == 404:
            raise FleetError(f"{self.provider} answered 404 ({message}) for {what}",
                             hint="check the PR/MR number and the repository, and that the token can see them")
        raise FleetError(f"{self.provider} refused {what} (HTTP {status} {message})")


def _json(response: Any, what: str) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise FleetError(f"the answer for {what} is not JSON") from exc


class GitHub:
    name = "github"

    def __init__(self, api: Api, repo: str, number: int) -> None:
        self.api, self.repo, self.number = api, repo, number
        self.where = f"pull request #{number} of {repo}"

    def comments(self) -> list[Comment]:
        out: list[Comment] = []
        path: str | None = f"repos/{self.repo}/issues/{self.number}/comments"
        params: dict[str, Any] | None = {"per_page": 100}
        for _ in range(MAX_PAGES):
            if path is None:
                break
            response = self.api.request("GET", path, params=params, what=f"the comments of {self.where}")
            page = _json(response, "the comments")
            out += [_github_comment(c) for c in page if isinstance(c, dict)]
            following = response.links.get("next", {}).get("url")
            path, params = (str(following), None) if following and self.api.same_origin(following) else (None, None)
        return out

    def create(self, body: str) -> Comment:
        response = self.api.request("POST", f"repos/{self.repo}/issues/{self.number}/comments",
                                    json_body={"body": body}, what=f"a new comment on {self.where}")
        return _github_comment(_json(response, "the new comment"))

    def update(self, comment_id: int, body: str) -> Comment:
        response = self.api.request("PATCH", f"repos/{self.repo}/issues/comments/{comment_id}",
                                    json_body={"body": body}, what=f"comment {comment_id} on {self.where}")
        return _github_comment(_json(response, "the updated comment"))


def _github_comment(data: dict[str, Any]) -> Comment:
    return Comment(id=int(data["id"]), body=str(data.get("body") or ""), url=str(data.get("html_url") or ""))


class GitLab:
    name = "gitlab"

    def __init__(self, api: Api, project: str, iid: int) -> None:
        self.api, self.project, self.iid = api, project, iid
        self.where = f"merge request !{iid} of project {project}"
        self._base = f"projects/{quote(project, safe='')}/merge_requests/{iid}/notes"

    def comments(self) -> list[Comment]:
        out: list[Comment] = []
        page: str | None = "1"
        for _ in range(MAX_PAGES):
            if not page:
                break
            response = self.api.request("GET", self._base, params={"per_page": 100, "page": page, "sort": "asc",
                                                                     "order_by": "created_at"},
                                        what=f"the notes of {self.where}")
            out += [_gitlab_note(n) for n in _json(response, "the notes")
                    if isinstance(n, dict) and not n.get("system")]
            page = response.headers.get("x-next-page") or None
        return out

    def create(self, body: str) -> Comment:
        response = self.api.request("POST", self._base, json_body={"body": body}, what=f"a new note on {self.where}")
        return _gitlab_note(_json(response, "the new note"))

    def update(self, comment_id: int, body: str) -> Comment:
        response = self.api.request("PUT", f"{self._base}/{comment_id}", json_body={"body": body},
                                    what=f"note {comment_id} on {self.where}")
        return _gitlab_note(_json(response, "the updated note"))


def _gitlab_note(data: dict[str, Any]) -> Comment:
    return Comment(id=int(data["id"]), body=str(data.get("body") or ""))


# ------------------------------------------------------------------------------------------------ from the CI's env


@dataclass(frozen=True)
class Target:
    """Where the comment goes, as the CI's environment (or the command line) says."""

    provider: str
    api_url: str
    repo: str  # GitHub owner/name; GitLab project ID or path
    number: int  # PR number, MR IID
    token: str
    token_header: str
    run_url: str | None  # the CI run that holds the plan artifact
    commit: str | None  # the commit the plan was made at


def _event(env: Mapping[str, str]) -> dict[str, Any]:
    path = env.get("GITHUB_EVENT_PATH")
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _number(text: str | None, what: str) -> int | None:
    if text is None or text == "":
        return None
    if not text.isdigit() or not 0 < int(text) < 2**31:
        raise UsageError(f"{what} {text[:40]!r} is not a PR/MR number")
    return int(text)


def target_from_env(provider: str, env: Mapping[str, str], *, number: int | None = None, repo: str | None = None,
                    api_url: str | None = None) -> Target:
    """The target of `provider` from the CI's variables; the arguments win over them."""
    if provider == "github":
        event = _event(env)
        pr = event.get("pull_request") or event.get("issue") or {}
        if number is None and isinstance(pr, dict) and isinstance(pr.get("number"), int):
            number = pr["number"]
        ref = env.get("GITHUB_REF", "")
        if number is None and ref.startswith("refs/pull/"):
            number = _number(ref.split("/")[2], "GITHUB_REF's")
        repo = repo or env.get("GITHUB_REPOSITORY")
        token = env.get("GITHUB_TOKEN") or env.get("GH_TOKEN") or ""
        server, run = env.get("GITHUB_SERVER_URL"), env.get("GITHUB_RUN_ID")
        head = pr.get("head") if isinstance(pr, dict) else None
        commit = (head.get("sha") if isinstance(head, dict) else None) or env.get("GITHUB_SHA")
        target = Target("github", api_url or env.get("GITHUB_API_URL") or "https://api.github.com", repo or "",
                        number or 0, token, "Authorization",
                        f"{server}/{repo}/actions/runs/{run}" if server and repo and run else None, commit)
        names = ("GITHUB_TOKEN", "GITHUB_REPOSITORY (or --repo)", "PR number (a pull_request event, or --pr)")
    else:
        number = number if number is not None else _number(env.get("CI_MERGE_REQUEST_IID"), "CI_MERGE_REQUEST_IID")
        repo = repo or env.get("CI_PROJECT_ID")
        token, header = (env["GITLAB_TOKEN"], "PRIVATE-TOKEN") if env.get("GITLAB_TOKEN") else \
            (env.get("CI_JOB_TOKEN", ""), "JOB-TOKEN")
        target = Target("gitlab", api_url or env.get("CI_API_V4_URL") or "https://gitlab.com/api/v4", repo or "",
                        number or 0, token, header, env.get("CI_JOB_URL"),
                        env.get("CI_MERGE_REQUEST_SOURCE_BRANCH_SHA") or env.get("CI_COMMIT_SHA"))
        names = ("GITLAB_TOKEN or CI_JOB_TOKEN", "CI_PROJECT_ID (or --repo)", "MR IID (CI_MERGE_REQUEST_IID, or --pr)")
    missing = [n for n, v in zip(names, (target.token, target.repo, target.number), strict=True) if not v]
    if missing:
        raise UsageError(f"{provider}: missing {', '.join(missing)}",
                         hint="run this in the PR/MR job of the CI, or pass the missing values (the token only "
                              "through the environment)")
    if not api_url_ok(target.api_url):
        raise UsageError(f"--api-url {target.api_url[:80]!r} is not an http(s) URL")
    return target


def api_url_ok(url: str) -> bool:
    return url.startswith(("https://", "http://")) and len(url) < 2000 and url.isprintable() and " " not in url


def open_provider(target: Target, *, timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> Provider:
    """The Provider of `target` (its Api closed by `close(provider)`)."""
    if target.provider == "github":
        headers = {"Authorization": f"Bearer {target.token}", "Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "fleet-ci"}
        return GitHub(Api("GitHub", target.api_url, headers, target.token, timeout=timeout, sleep=sleep),
                      target.repo, target.number)
    headers = {target.token_header: target.token, "User-Agent": "fleet-ci"}
    return GitLab(Api("GitLab", target.api_url, headers, target.token, timeout=timeout, sleep=sleep),
                  target.repo, target.number)


def close(provider: Provider) -> None:
    api = getattr(provider, "api", None)
    if isinstance(api, Api):
        api.close()

