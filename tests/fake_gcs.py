"""A fake GCS in a local folder, for tests: gs://BUCKET/NAME is the file <root>/BUCKET/NAME.

No network in tests, so both ways the code reaches GCS are pointed at the same local folder:
  - epath (workdir files, corpus files, orbax's metadata and step listing) goes
    through fsspec's "gs" protocol: a fake file system that, like GCS, refuses
    appends, creates no empty folders and lists a folder only while objects
    are under it;
  - orbax's array data goes through tensorstore's own GCS driver, pointed by
    TENSORSTORE_GCS_HTTP_URL at a small HTTP server here that speaks the part
    of the GCS JSON API tensorstore uses (media upload, ranged and conditional
    reads, listing, deletes), modelled on tensorstore's own test mock of GCS.
orbax also asks the bucket (google-cloud-storage, not installed here) whether
it has a hierarchical namespace; the fake answers no.

Not covered: real GCS (authentication, consistency, retries, latency), gcsfs
itself, and tensorstore's gRPC driver.

A test module makes its fixtures with the factories (importing this file as
test_remote_workdir does, by putting tests/ on sys.path):
  _fake_gcs_server = server_fixture()             # Only for tensorstore (orbax checkpoints).
  fake_gcs = root_fixture(server="_fake_gcs_server")  # Or root_fixture() for epath/fsspec alone.
"""

import http.server
import json
import os
import re
import threading
import types
import urllib.parse

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
import pytest

BUCKET = "fake-bucket"


class FakeGcsFileSystem(DirFileSystem):
  """fsspec "gs": paths `bucket/name` are files under `root`, with GCS's limits."""

  protocol = ("gs", "gcs")
  root = None  # Set by the fixture; epath caches one instance of this class per process.

  def __init__(self, *args, **kwargs):
    del args, kwargs  # finalize_on_close=True and the like, from epath.
    super().__init__(path="/", fs=LocalFileSystem(auto_mkdir=True))

  @property
  def path(self):
    return type(self).root

  @path.setter
  def path(self, value):
    pass

  def open(self, path, mode="rb", *args, **kwargs):
    if "a" in mode:
      raise NotImplementedError(f"GCS objects cannot be appended to (mode {mode!r} for {path})")
    return super().open(path, mode, *args, **kwargs)

  def mkdir(self, path, *args, **kwargs):
    pass  # GCS has no folders: a prefix exists while objects are under it.

  def makedirs(self, path, exist_ok=False):
    pass

  def rm(self, path, *args, **kwargs):
    super().rm(path, *args, **kwargs)
    for p in [path] if isinstance(path, str) else path:
      _prune(os.path.dirname(self._join(p)))

  def mv(self, path1, path2, *args, **kwargs):
    super().mv(path1, path2, *args, **kwargs)
    _prune(os.path.dirname(self._join(path1)))


def _prune(folder):
  """Removes empty folders up to the bucket: on GCS a prefix with no objects is gone."""
  root = FakeGcsFileSystem.root
  while (
    len(folder) > len(root)
    and os.path.dirname(folder) != root.rstrip("/")
    and os.path.isdir(folder)
  ):
    if os.listdir(folder):
      return
    os.rmdir(folder)
    folder = os.path.dirname(folder)


class FakeGcsServer(http.server.ThreadingHTTPServer):
  """The GCS JSON API calls of tensorstore's gcs driver, on the files of `FakeGcsFileSystem.root`."""

  daemon_threads = True

  def __init__(self):
    super().__init__(("127.0.0.1", 0), _FakeGcsHandler)
    self.lock = threading.Lock()
    self.generations = {}  # file -> ((inode, mtime, size), generation): a new object, a new generation.
    self.next_generation = 1
    self.requests = {"upload": 0, "read": 0, "list": 0, "delete": 0, "not faked": 0}

  def generation(self, file):
    st = os.stat(file)
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    known = self.generations.get(file)
    if known is None or known[0] != key:
      self.next_generation += 1
      known = self.generations[file] = (key, self.next_generation)
    return known[1]


class _FakeGcsHandler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  server: FakeGcsServer

  def log_message(self, *args):
    pass

  def _reply(self, code, body=b"", headers=None):
    self.send_response(code)
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _metadata(self, bucket, name, file):
    return {
      "kind": "storage#object",
      "bucket": bucket,
      "name": name,
      "size": str(os.path.getsize(file)),
      "generation": str(self.server.generation(file)),
      "metageneration": "1",
    }

  def _handle(self):
    n = int(self.headers.get("Content-Length") or 0)
    payload = self.rfile.read(n) if n else b""
    url = urllib.parse.urlsplit(self.path)
    params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
    m = re.fullmatch(r"(/upload)?/storage/v1/b/([^/]+)/o(?:/(.+))?", url.path)
    if not m:
      return self._reply(404)
    upload, bucket, name = m.group(1), m.group(2), m.group(3)
    base = os.path.join(FakeGcsFileSystem.root, bucket)
    with self.server.lock:
      if name is None and self.command == "GET":
        return self._list(bucket, base, params)
      if upload and self.command == "POST" and params.get("uploadType") == "media":
        return self._insert(bucket, base, params["name"], params, payload)
      if name is not None and self.command in ("GET", "DELETE"):
        return self._object(bucket, base, urllib.parse.unquote(name), params)
    self.server.requests["not faked"] += 1  # Tests check there was none.
    return self._reply(400, b'{"error": {"code": 400, "message": "not faked"}}')

  do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

  def _condition_fails(self, file, params):
    exists = os.path.isfile(file)
    generation = self.server.generation(file) if exists else 0
    if "ifGenerationMatch" in params and int(params["ifGenerationMatch"]) != generation:
      return True
    return (
      "ifGenerationNotMatch" in params
      and exists
      and int(params["ifGenerationNotMatch"]) == generation
    )

  def _insert(self, bucket, base, name, params, payload):
    self.server.requests["upload"] += 1
    file = os.path.join(base, name)
    if self._condition_fails(file, params):
      return self._reply(412)
    os.makedirs(os.path.dirname(file), exist_ok=True)
    tmp = f"{file}.fake-gcs-upload"
    with open(tmp, "wb") as f:
      f.write(payload)
    os.replace(tmp, file)
    return self._reply(
      200,
      json.dumps(self._metadata(bucket, name, file)).encode(),
      {"Content-Type": "application/json"},
    )

  def _object(self, bucket, base, name, params):
    file = os.path.join(base, name)
    if self.command == "DELETE":
      self.server.requests["delete"] += 1
      if not os.path.isfile(file):
        return self._reply(404)
      if self._condition_fails(file, params):
        return self._reply(412)
      os.remove(file)
      _prune(os.path.dirname(file))
      return self._reply(204)
    self.server.requests["read"] += 1
    if params.get("ifGenerationMatch") == "0":
      return self._reply(412 if os.path.isfile(file) else 204)
    if not os.path.isfile(file):
      return self._reply(404)
    generation = self.server.generation(file)
    if "ifGenerationMatch" in params and int(params["ifGenerationMatch"]) != generation:
      return self._reply(412)
    if "ifGenerationNotMatch" in params and int(params["ifGenerationNotMatch"]) == generation:
      return self._reply(304)
    if params.get("alt") != "media":
      return self._reply(
        200,
        json.dumps(self._metadata(bucket, name, file)).encode(),
        {"Content-Type": "application/json"},
      )
    with open(file, "rb") as f:
      data = f.read()
    headers = {
      "Content-Type": "application/octet-stream",
      "x-goog-generation": str(generation),
      "x-goog-metageneration": "1",
    }
    wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
    if not wanted:
      return self._reply(200, data, headers)
    first, last = wanted.groups()
    if first == "":  # The last `last` bytes.
      first, last = max(len(data) - int(last), 0), len(data) - 1
    else:
      first, last = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
    if first >= len(data) and len(data):
      return self._reply(416)
    headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
    return self._reply(206, data[first : last + 1], headers)

  def _list(self, bucket, base, params):
    self.server.requests["list"] += 1
    names = []
    for folder, _, files in os.walk(base):
      for f in files:
        names.append(os.path.relpath(os.path.join(folder, f), base).replace(os.sep, "/"))
    names.sort()
    prefix, start, end = (
      params.get("prefix", ""),
      params.get("startOffset"),
      params.get("endOffset"),
    )
    token = params.get("pageToken")
    names = [
      n
      for n in names
      if n.startswith(prefix)
      and (start is None or n >= start)
      and (end is None or n < end)
      and (token is None or n > token)
    ]
    limit = int(params.get("maxResults", 1000))
    body = {
      "kind": "storage#objects",
      "items": [self._metadata(bucket, n, os.path.join(base, n)) for n in names[:limit]],
    }
    if len(names) > limit:
      body["nextPageToken"] = names[limit - 1]
    return self._reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})


def server_fixture():
  """A module-scoped fixture: the GCS JSON API server that tensorstore's GCS driver is pointed at."""

  @pytest.fixture(scope="module")
  def fake_gcs_server():
    server = FakeGcsServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with pytest.MonkeyPatch.context() as mp:
      # Read by tensorstore when its GCS driver is first used in this process.
      mp.setenv("TENSORSTORE_GCS_HTTP_URL", f"http://127.0.0.1:{server.server_address[1]}")
      mp.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "fake-token")
      yield server
    server.shutdown()
    server.server_close()

  return fake_gcs_server


def root_fixture(server: str | None = None):
  """A fixture: the local folder that stands for gs://; `gs://fake-bucket/...` is `<it>/fake-bucket/...`.

  `server` names the module's server_fixture() when the tests also write orbax checkpoints (through
  tensorstore's driver, and orbax's bucket query); without it only epath/fsspec's "gs" is faked.
  """

  @pytest.fixture
  def fake_gcs(request, tmp_path, monkeypatch):
    from etils.epath import gpath  # pylint: disable=g-import-not-at-top

    root = tmp_path / "gcs"
    (root / BUCKET).mkdir(parents=True)
    monkeypatch.setattr(FakeGcsFileSystem, "root", str(root))
    for protocol in ("gs", "gcs"):
      fsspec.register_implementation(protocol, FakeGcsFileSystem, clobber=True)
    # epath prefers tensorflow's gfile for gs:// when tensorflow is installed: this fake is fsspec's.
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    if server:
      from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=g-import-not-at-top

      monkeypatch.setattr(
        gcs_utils,
        "get_bucket",
        lambda name: types.SimpleNamespace(hierarchical_namespace_enabled=False),
      )
      fake_server = request.getfixturevalue(server)
      fake_server.requests.update(dict.fromkeys(fake_server.requests, 0))
    return root

  return fake_gcs
