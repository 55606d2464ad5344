"""A stand-in for the GitHub MCP server: its tool names and argument names, small deterministic JSON answers.

    python -m tests.servers.github_like --transport stdio
    python -m tests.servers.github_like --transport streamable-http --port 3902    # http://127.0.0.1:3902/mcp
    options: --require-token TOKEN (HTTP: answer 401 unless `Authorization: Bearer TOKEN`)

`whoami` reports the credential the server received: the `Authorization` header on HTTP, or the
`GITHUB_PERSONAL_ACCESS_TOKEN` environment variable on stdio (how the real server takes its token).
Read tools carry `readOnlyHint`, and `delete_file` / `merge_pull_request` carry `destructiveHint`, as upstream.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.servers._common import build_parser, serve

READ = ToolAnnotations(read_only_hint=True, open_world_hint=True)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True)
TOKEN_ENV = "GITHUB_PERSONAL_ACCESS_TOKEN"


def _number(*parts: Any) -> int:
    """A stable small number derived from the arguments, so answers are deterministic but not constant."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:6], 16) % 900 + 100


def _repo(owner: str, repo: str) -> dict[str, Any]:
    return {
        "id": _number(owner, repo),
        "full_name": f"{owner}/{repo}",
        "html_url": f"https://github.com/{owner}/{repo}",
        "private": False,
        "default_branch": "main",
    }


def create_server() -> MCPServer[Any]:
    mcp: MCPServer[Any] = MCPServer("github", version="0.0.1-test", log_level="WARNING")

    def tool(annotations: ToolAnnotations) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            # why: the real server answers one JSON text block and no outputSchema; lists must not be split
            @functools.wraps(fn)
            def as_json(*args: Any, **kwargs: Any) -> str:
                return json.dumps(fn(*args, **kwargs), indent=2)

            mcp.add_tool(as_json, annotations=annotations, structured_output=False)
            return fn

        return register

    @tool(READ)
    def whoami(ctx: Context[Any, Any]) -> dict[str, Any]:
        """Report the credential this server received (Authorization header, or the token env var on stdio)."""
        headers = ctx.headers
        authorization = headers.get("authorization") if headers is not None else None
        env_token = os.environ.get(TOKEN_ENV)
        return {
            "transport": "http" if headers is not None else "stdio",
            "authorization": authorization,
            "env_token": env_token,
            "login": "octocat" if (authorization or env_token) else None,
            # headers a gateway forwards (claim_to_header), so tests can see them
            "forwarded": {k: v for k, v in (headers or {}).items() if k.startswith("x-consumer")},
        }

    @tool(READ)
    def get_me() -> dict[str, Any]:
        """Get details of the authenticated GitHub user."""
        return {"login": "octocat", "id": 1, "name": "The Octocat", "type": "User"}

    @tool(READ)
    def search_repositories(query: str, page: int = 1, perPage: int = 30) -> dict[str, Any]:  # noqa: N803
        """Search for GitHub repositories."""
        items = [_repo("octo", f"{query}-{i}") for i in range(1, 3)]
        return {"total_count": len(items), "incomplete_results": False, "page": page, "items": items}

    @tool(READ)
    def get_file_contents(owner: str, repo: str, path: str = "/", ref: str | None = None) -> dict[str, Any]:
        """Get the contents of a file or directory from a GitHub repository."""
        return {
            "type": "file",
            "name": path.rsplit("/", 1)[-1] or "/",
            "path": path,
            "sha": f"{_number(owner, repo, path, ref):040d}"[-40:],
            "ref": ref or "main",
            "content": f"contents of {owner}/{repo}/{path}",
            "encoding": "utf-8",
        }

    @tool(READ)
    def list_issues(owner: str, repo: str, state: str = "open", labels: list[str] | None = None,
                    page: int = 1, perPage: int = 30) -> list[dict[str, Any]]:  # noqa: N803
        """List issues in a GitHub repository."""
        return [
            {"number": n, "title": f"Issue {n} of {owner}/{repo}", "state": state, "labels": labels or []}
            for n in (1, 2)
        ]

    @tool(READ)
    def get_issue(owner: str, repo: str, issue_number: int) -> dict[str, Any]:
        """Get details of a specific issue in a GitHub repository."""
        return {"number": issue_number, "title": f"Issue {issue_number} of {owner}/{repo}", "state": "open"}

    @tool(READ)
    def search_issues(query: str, page: int = 1, perPage: int = 30) -> dict[str, Any]:  # noqa: N803
        """Search for issues in GitHub repositories."""
        return {"total_count": 1, "items": [{"number": _number(query), "title": f"Issue about {query}"}]}

    @tool(READ)
    def list_pull_requests(owner: str, repo: str, state: str = "open", page: int = 1,
                           perPage: int = 30) -> list[dict[str, Any]]:  # noqa: N803
        """List pull requests in a GitHub repository."""
        return [{"number": n, "title": f"PR {n} of {owner}/{repo}", "state": state, "draft": False} for n in (3, 4)]

    @tool(READ)
    def get_pull_request(owner: str, repo: str, pullNumber: int) -> dict[str, Any]:  # noqa: N803
        """Get details of a specific pull request."""
        return {"number": pullNumber, "title": f"PR {pullNumber} of {owner}/{repo}", "state": "open",
                "mergeable": True}

    @tool(READ)
    def list_commits(owner: str, repo: str, sha: str | None = None, page: int = 1) -> list[dict[str, Any]]:
        """Get the list of commits of a branch in a GitHub repository."""
        return [{"sha": f"{_number(owner, repo, sha, i):040d}"[-40:], "message": f"commit {i}"} for i in (1, 2)]

    @tool(READ)
    def list_branches(owner: str, repo: str, page: int = 1) -> list[dict[str, Any]]:
        """List branches in a GitHub repository."""
        return [{"name": "main", "protected": True}, {"name": "dev", "protected": False}]

    @tool(READ)
    def search_users(query: str, page: int = 1, perPage: int = 30) -> dict[str, Any]:  # noqa: N803
        """Search for GitHub users."""
        return {"total_count": 1, "items": [{"login": query, "id": _number(query), "type": "User"}]}

    @tool(READ)
    def search_code(query: str, page: int = 1, perPage: int = 30) -> dict[str, Any]:  # noqa: N803
        """Search for code across GitHub repositories."""
        return {"total_count": 1, "items": [{"name": "main.py", "path": "src/main.py",
                                             "repository": _repo("octo", "code"), "fragment": query}]}

    @tool(WRITE)
    def create_issue(owner: str, repo: str, title: str, body: str = "", labels: list[str] | None = None,
                     assignees: list[str] | None = None) -> dict[str, Any]:
        """Create a new issue in a GitHub repository."""
        number = _number(owner, repo, title)
        return {"number": number, "title": title, "body": body, "labels": labels or [],
                "assignees": assignees or [], "html_url": f"https://github.com/{owner}/{repo}/issues/{number}"}

    @tool(WRITE)
    def add_issue_comment(owner: str, repo: str, issue_number: int, body: str) -> dict[str, Any]:
        """Add a comment to an existing issue."""
        return {"id": _number(owner, repo, issue_number, body), "issue_number": issue_number, "body": body}

    @tool(WRITE)
    def create_pull_request(owner: str, repo: str, title: str, head: str, base: str, body: str = "",
                            draft: bool = False) -> dict[str, Any]:
        """Create a new pull request in a GitHub repository."""
        number = _number(owner, repo, head, base)
        return {"number": number, "title": title, "head": head, "base": base, "draft": draft,
                "html_url": f"https://github.com/{owner}/{repo}/pull/{number}"}

    @tool(DESTRUCTIVE)
    def merge_pull_request(owner: str, repo: str, pullNumber: int, merge_method: str = "merge",  # noqa: N803
                           commit_title: str | None = None) -> dict[str, Any]:
        """Merge a pull request."""
        return {"merged": True, "sha": f"{_number(owner, repo, pullNumber):040d}"[-40:],
                "message": f"Pull Request {pullNumber} successfully merged with {merge_method}"}

    @tool(WRITE)
    def create_or_update_file(owner: str, repo: str, path: str, content: str, message: str, branch: str,
                              sha: str | None = None) -> dict[str, Any]:
        """Create or update a single file in a GitHub repository."""
        return {"content": {"path": path, "sha": f"{_number(owner, repo, path, content):040d}"[-40:]},
                "commit": {"message": message, "branch": branch}}

    @tool(DESTRUCTIVE)
    def delete_file(owner: str, repo: str, path: str, message: str, branch: str) -> dict[str, Any]:
        """Delete a file from a GitHub repository."""
        return {"deleted": path, "commit": {"message": message, "branch": branch}}

    @tool(WRITE)
    def push_files(owner: str, repo: str, branch: str, files: list[dict[str, str]], message: str) -> dict[str, Any]:
        """Push multiple files to a GitHub repository in a single commit."""
        return {"ref": f"refs/heads/{branch}", "files": sorted(f.get("path", "") for f in files), "message": message}

    @tool(WRITE)
    def create_branch(owner: str, repo: str, branch: str, from_branch: str | None = None) -> dict[str, Any]:
        """Create a new branch in a GitHub repository."""
        return {"ref": f"refs/heads/{branch}", "from": from_branch or "main"}

    @tool(WRITE)
    def create_repository(name: str, description: str = "", private: bool = False) -> dict[str, Any]:
        """Create a new GitHub repository in your account."""
        return {**_repo("octocat", name), "description": description, "private": private}

    @tool(WRITE)
    def fork_repository(owner: str, repo: str, organization: str | None = None) -> dict[str, Any]:
        """Fork a GitHub repository to your account or specified organization."""
        return {**_repo(organization or "octocat", repo), "fork": True, "parent": f"{owner}/{repo}"}

    return mcp


class RequireBearer:
    """ASGI wrapper: 401 with WWW-Authenticate unless the request carries `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != self.expected:
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"www-authenticate", b'Bearer realm="github"'),
                                    (b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"error":"invalid_token"}'})
            return
        await self.app(scope, receive, send)


def main() -> None:
    parser = build_parser("GitHub-like MCP server for mcp-hub tests", 3902)
    parser.add_argument("--require-token", help="HTTP only: reject requests without this bearer token")
    args = parser.parse_args()
    server = create_server()
    if args.require_token and args.transport == "streamable-http":
        # why: MCPServer.run has no hook for an auth check that is not OAuth; wrap its app instead
        app = RequireBearer(server.streamable_http_app(stateless_http=args.stateless,
                                                       json_response=args.json_response, host=args.host),
                            args.require_token)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return
    serve(server, args)


if __name__ == "__main__":
    main()
