"""A small Hugging Face Hub stand-in for tests, served on 127.0.0.1: git-like repos of commits, the
file-resolve protocol (HEAD/GET with X-Repo-Commit, ETag, Content-Length; a redirect for large files),
repo creation, preupload (every file "regular") and NDJSON commits. It counts requests so tests can
assert what the real `huggingface_hub` client does. Test code only; the client is never patched."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class Repo:
    def __init__(self):
        self.commits: dict[str, dict[str, bytes]] = {}
        self.branches: dict[str, str] = {}

    def commit(self, files: dict[str, bytes], branch: str = "main", message: str = "") -> str:
        parent = self.commits.get(self.branches.get(branch, ""), {})
        tree = {**parent, **files}
        digest = hashlib.sha1(json.dumps([message, sorted((k, hashlib.sha256(v).hexdigest()) for k, v in tree.items()),
                                          len(self.commits)]).encode()).hexdigest()
        self.commits[digest] = tree
        self.branches[branch] = digest
        return digest


class HubServer:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: Counter = Counter()
        self.corrupt: set[tuple[str, str]] = set()  # (repo_id, filename) served with flipped bytes
        self.log: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, method: str, contains: str = "") -> int:
        return sum(n for (m, path), n in self.requests.items() if m == method and contains in path)

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None, head=False):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    if k != "Content-Length":
                        self.send_header(k, v)
                length = (headers or {}).get("Content-Length", str(len(body)))  # HEAD announces the GET's length
                self.send_header("Content-Length", length)
                self.end_headers()
                if not head and body:
                    self.wfile.write(body)

            def _json(self, status, payload):
                self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

            def _error(self, status, message, code=None):
                headers = {"Content-Type": "application/json", "X-Error-Message": message}
                if code:
                    headers["X-Error-Code"] = code
                self._send(status, json.dumps({"error": message}).encode(), headers)

            def _resolve(self, head: bool):
                # /{org}/{name}/resolve/{revision}/{filename}
                path = unquote(urlparse(self.path).path).strip("/").split("/")
                if len(path) < 5 or path[2] != "resolve":
                    return self._error(404, "not found")
                repo_id, revision, filename = "/".join(path[:2]), path[3], "/".join(path[4:])
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "Repository not found", "RepoNotFound")
                commit = repo.branches.get(revision, revision)
                if commit not in repo.commits:
                    return self._error(404, "Invalid rev id", "RevisionNotFound")
                files = repo.commits[commit]
                if filename not in files:
                    return self._error(404, "Entry not found", "EntryNotFound")
                data = files[filename]
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                if (repo_id, filename) in hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                headers = {"X-Repo-Commit": commit, "ETag": etag, "Content-Length": str(len(data)),
                           "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
                self._send(200, data, headers, head=head)

            def do_HEAD(self):
                hub.requests[("HEAD", urlparse(self.path).path)] += 1
                self._resolve(head=True)

            def do_GET(self):
                hub.requests[("GET", urlparse(self.path).path)] += 1
                if "/resolve/" in self.path:
                    return self._resolve(head=False)
                hub.log.append(f"unhandled GET {self.path}")
                self._error(404, "not found")

            def do_POST(self):
                path = urlparse(self.path).path
                hub.requests[("POST", path)] += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = path.strip("/").split("/")
                if path == "/api/validate-yaml":  # the client checks a README's front matter before committing it
                    import yaml

                    content = json.loads(body)["content"]
                    errors = []
                    if content.startswith("---\n"):
                        try:
                            meta = yaml.safe_load(content.split("\n---", 1)[0][4:])
                            if not isinstance(meta, dict):
                                errors.append("metadata must be a YAML mapping")
                        except yaml.YAMLError as e:
                            errors.append(f"invalid YAML: {e}")
                    return self._json(400 if errors else 200, {"errors": [{"message": m} for m in errors], "warnings": []})
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    name = payload["name"]
                    repo_id = name if "/" in name else f"{payload.get('organization') or 'user'}/{name}"
                    if repo_id in hub.repos:  # the Hub answers 409 with the existing repo's url
                        return self._send(409, json.dumps({"error": "You already created this model repo",
                                                           "url": f"{hub.url}/{repo_id}"}).encode(),
                                          {"Content-Type": "application/json", "X-Error-Message": "You already created this model repo"})
                    hub.repos[repo_id] = Repo()
                    return self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if len(parts) >= 6 and parts[0] == "api" and parts[4] in ("preupload", "commit"):
                    repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
                    if repo_id not in hub.repos:
                        return self._error(404, "Repository not found", "RepoNotFound")
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                          for f in files]})
                    added, summary = {}, ""
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "header":
                            summary = item["value"]["summary"]
                        elif item["key"] == "file":
                            added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        else:
                            return self._error(400, f"unsupported commit operation {item['key']}")
                    oid = hub.repos[repo_id].commit(added, branch=revision, message=summary)
                    return self._json(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                                            "success": True})
                hub.log.append(f"unhandled POST {path}")
                self._error(404, "not found")

        return Handler
