"""A fake Hugging Face Hub on localhost: what huggingface_hub's repo_info and snapshot_download, and the
datasets library's load_dataset, ask of it. Tests fill `repos` and read `requests`."""

import hashlib
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def commit_of(repo: str) -> str:
    return hashlib.sha1(repo.encode()).hexdigest()


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub(ThreadingHTTPServer):
    """What huggingface_hub's repo_info and snapshot_download ask: repo info, the file tree, HEAD and GET of
    /resolve. Every request is recorded as (method, path, Authorization header)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}  # (models|datasets, repo id) -> files
        self.gated: set[str] = set()
        self.broken: dict[str, str] = {}  # file path -> how its GET fails: "500" or "drop" (no answer)
        self.requests: list[tuple[str, str, str | None]] = []

    def gets(self, path_end: str) -> int:
        return sum(method == "GET" and path.endswith(path_end) for method, path, _ in self.requests)

    def authorizations(self, repo: str) -> set[str | None]:
        return {auth for _, path, auth in self.requests if f"/{repo}/" in path}


class HubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(head=True)

    def do_GET(self):
        self.answer(head=False)

    def send(self, status: int, body: bytes = b"", head: bool = False, **headers: str) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def answer(self, head: bool) -> None:
        hub: FakeHub = self.server
        path = unquote(urlsplit(self.path).path)
        hub.requests.append((self.command, path, self.headers.get("Authorization")))
        parts = path.strip("/").split("/") + [""] * 5
        if parts[0] == "api":  # /api/{models,datasets}/{org}/{name}/{revision,tree}/{rev}
            kind, repo, action, filename = parts[1], "/".join(parts[2:4]), parts[4], ""
        else:  # [/datasets]/{org}/{name}/resolve/{rev}/{file path}
            kind = "datasets" if parts[0] == "datasets" else "models"
            parts = parts[1:] if kind == "datasets" else parts
            repo, action, filename = "/".join(parts[:2]), parts[2], "/".join(p for p in parts[4:] if p)
        if repo in hub.gated:
            self.send(401, X_Error_Code="GatedRepo", X_Error_Message=f"Access to {repo} is restricted.")
            return
        files = hub.repos.get((kind, repo))
        if files is None or action not in ("revision", "tree", "resolve"):
            self.send(404, head=head, X_Error_Code="RepoNotFound", X_Error_Message="Repository not found")
        elif action == "revision":
            siblings = [{"rfilename": name} for name in files]
            self.send(200, json.dumps({"id": repo, "sha": commit_of(repo), "siblings": siblings}).encode())
        elif action == "tree":
            query = parse_qs(urlsplit(self.path).query)
            self.send(200, json.dumps(tree(files, "/".join(parts[6:]).strip("/"), query)).encode())
        elif filename not in files:
            self.send(404, head=head, X_Error_Code="EntryNotFound", X_Repo_Commit=commit_of(repo))
        elif not head and hub.broken.get(filename) == "drop":
            self.close_connection = True  # the connection ends without an answer
        elif not head and filename in hub.broken:
            self.send(500, b"upstream failure")
        else:
            meta = {"X-Repo-Commit": commit_of(repo), "ETag": f'"{git_blob_id(files[filename])}"'}
            self.send(200, files[filename], head=head, **meta)


def tree(files: dict[str, bytes], under: str, query: dict) -> list[dict]:
    """The Hub's tree listing of `under`: its files, and, unless recursive, its folders instead of theirs."""
    recursive = query.get("recursive", ["false"])[0] == "true"
    entries, folders = [], set()
    for name, content in files.items():
        if under and not name.startswith(f"{under}/"):
            continue
        inner = name[len(under) + 1 :] if under else name
        if "/" in inner and not recursive:
            folders.add(f"{under}/{inner.split('/')[0]}".strip("/"))
            continue
        entries.append({"type": "file", "path": name, "size": len(content), "oid": git_blob_id(content)})
    return entries + [{"type": "directory", "path": folder, "oid": "0" * 40} for folder in sorted(folders)]


@contextmanager
def running_hub():
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
