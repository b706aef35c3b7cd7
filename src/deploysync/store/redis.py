"""The shared store: Redis, for several server processes and machines.

Keys, all below the namespace prefix (``deploysync:`` by default)::

    blob:<digest>             the bytes of a blob, named by their sha256
    blob:<digest>:gzip        its precompressed variants (also ``:br``)
    blobs                     hash: digest -> JSON sizes of its variants; a blob is
                              complete (and listed) once its field exists
    deployment:<id>           a published manifest (JSON)
    deployments               set of published ids
    stamps                    hash: id -> a random token drawn at its publication
    history                   list of activations (JSON), oldest first
    seq                       the seq of the latest activation (the change probe)
    published                 bumped by every publish and unpublish (also probed)
    current                   JSON of the latest activation
    lock                      the writers' lock (a random token, with a TTL)

A reader sees the old state or the complete new one: a blob's bytes are written in the
same MULTI/EXEC as its ``blobs`` field, a manifest and its set entry together, after its
blobs; an activation appends the history, sets ``seq`` and ``current`` and publishes on
``<namespace>:activations`` in one Lua script (scripts run atomically).

Servers never serve from Redis: :meth:`RedisStore.blob_path` materialises a blob into a
local content-addressed cache once, after checking its sha256, and returns the file. A
server's store (:meth:`RedisStore.keep_last_known`) also keeps the state it last read
(``state.json`` next to those copies), so a server started while Redis is unreachable
serves the last known deployment.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from ..manifest import Deployment, ManifestError, is_valid_id, validate_id
from .base import (
    CACHE_GRACE,
    DIGEST_PATTERN,
    ENCODINGS,
    HISTORY_LIMIT,
    HOLD_TTL,
    SUFFIXES,
    Activation,
    CacheError,
    DeploymentNotFound,
    Store,
    StoreError,
    check_digest,
    default_cache_home,
    make_folders,
)

log = logging.getLogger(__name__)

#: The prefix of the store's keys unless its URL or constructor names another.
DEFAULT_NAMESPACE = "deploysync"
INSTALL_HINT = "the redis store needs redis-py: pip install 'deploysync[redis]' (or redis)"
#: The writers' lock expires this long after its holder stops renewing it (a crash).
LOCK_TTL_MS = 30_000
LOCK_RENEW_EVERY = LOCK_TTL_MS / 3000
LOCK_POLL = (0.02, 0.25)  # first and longest wait between attempts to take the lock
#: Blobs fetched per round trip when a server copies a new deployment's assets.
PREFETCH_BATCH = 64
#: Connecting must fail fast: a CLI command reports an outage in a second or two.
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 10.0
#: The same for a server's reads (each socket read of a reply, not the whole reply).
SERVER_SOCKET_TIMEOUT = 3.0
#: After a failed read, a server answers from its last known state this long before
#: trying Redis again (a hanging Redis would make every read wait SOCKET_TIMEOUT).
DOWN_RETRY = 5.0
#: A blob this large that fails to be stored may be above Redis's proto-max-bulk-len.
LARGE_VALUE = 32 * 2**20
# What Redis answers when it wants other credentials (not an outage of the network).
_AUTH_MARKERS = (
    "NOAUTH",
    "WRONGPASS",
    "invalid username-password",
    "must be called with the client already authenticated",
    "Authentication required",
)
#: The last state a server read, in its store's cache folder.
STATE_FILE = "state.json"
STATE_FORMAT = 1

# Delete the lock only if it still holds our token (another writer may own it after
# our TTL ran out).
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# The writes that rely on the lock check in the same step that it is still ours: a writer
# paused past the lock's TTL (a suspended terminal, a frozen VM) while another one took it
# must not publish a manifest whose blobs that one may be deleting, nor delete blobs that
# one found stored.
# Each such script starts so: KEYS[1] is the lock, ARGV[1] the token it was taken with
# ('' for a write made without the lock: a repair by hand).
_UNLESS_LOCK_LOST = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('lock lost')
end
"""

# KEYS: lock, deployment:<id>, deployments, stamps, published; ARGV: token, manifest,
# id, stamp, channel, message.
PUBLISH_SCRIPT = (
    _UNLESS_LOCK_LOST
    + """
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""
)

# A deployment published already: listed again if the set lost it, stamped if it has no
# stamp yet (published by an earlier version, or the hash evicted) so that builds can rely
# on it from now on; an existing stamp is kept. 0 when it is not published.
# KEYS: lock, deployment:<id>, deployments, stamps; ARGV: token, id, stamp.
RELIST_SCRIPT = (
    _UNLESS_LOCK_LOST
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('HSETNX', KEYS[4], ARGV[2], ARGV[3])
return 1
"""
)

# KEYS: lock, blobs, then the blob's keys; ARGV: token ('' when unlocked), digest.
DELETE_BLOB_SCRIPT = (
    _UNLESS_LOCK_LOST
    + """
local freed = 0
for i = 3, #KEYS do
  freed = freed + redis.call('STRLEN', KEYS[i])
end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('DEL', unpack(KEYS, 3))
return freed
"""
)

# KEYS: lock, deployments, deployment:<id>, stamps, published; ARGV: token (or ''), id.
DELETE_DEPLOYMENT_SCRIPT = (
    _UNLESS_LOCK_LOST
    + """
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('INCR', KEYS[5])
return 1
"""
)

# KEYS: seq, history, current, deployment:<id>, deployments; ARGV: seq, activation JSON,
# history limit, channel, message, id. Refuses when the deployment is gone or the seq is
# not newer than the last one (a writer whose lock expired), so the record never goes
# backwards; lists the id again if the set lost it.
ACTIVATE_SCRIPT = """
if redis.call('EXISTS', KEYS[4]) == 0 then
  return redis.error_reply('missing deployment')
end
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= last then
  return redis.error_reply('stale seq ' .. last)
end
redis.call('SADD', KEYS[5], ARGV[6])
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise StoreError(f"Cannot open a Redis store: {INSTALL_HINT}") from None
    return redis


def redact(url: str) -> str:
    """The URL without its password (``:pw@`` or ``?password=``), for messages and logs."""
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.I)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _check_url(url: str, client: Any) -> None:
    """Raise ``ValueError`` for what redis-py accepts in a URL but gets wrong later: a
    database that is not a number (it would use 0), a parameter no connection takes (a
    ``TypeError`` at the first command)."""
    parts = urlsplit(url)
    if parts.scheme != "unix":
        db = parts.path.strip("/")
        if db and not re.fullmatch(r"[0-9]+", db):
            raise ValueError(f"the database {db!r} is not a number")
    pool = client.connection_pool
    try:
        # Making a connection object opens no socket; its constructor checks the keywords.
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as exc:
        match = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        raise ValueError(f"unknown parameter {match.group(1)!r}" if match else str(exc)) from None


def _split_namespace(url: str, given: str | None) -> tuple[str, str]:
    """(*url* without its ``namespace`` parameter, the namespace to use)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    named = [value for key, value in query if key == "namespace"]
    if len(set(named)) > 1:
        raise StoreError(f"Redis URL {redact(url)!r} names more than one namespace")
    if named and given is not None and named[0] != given:
        raise StoreError(f"Redis URL names namespace {named[0]!r}, the store was given {given!r}")
    namespace = named[0] if named else given if given is not None else DEFAULT_NAMESPACE
    if not namespace or any(c.isspace() for c in namespace):
        raise StoreError(f"Invalid Redis namespace {namespace!r}")
    if named:
        # The other parameters as written (redis-py reads them), and the rest of the URL
        # untouched: urlunsplit would turn unix:///path into unix:/path.
        rest = "&".join(
            pair for pair in parts.query.split("&") if unquote(pair.split("=")[0]) != "namespace"
        )
        base, _, tail = url.partition("?")
        fragment = "#" + parts.fragment if "#" in tail else ""
        url = base + ("?" + rest if rest else "") + fragment
    return url, namespace


def _reason(exc: BaseException) -> str:
    """The one-line reason of a connection error (``Connection refused``)."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.strerror:
        reason = cause.strerror
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = str(exc).strip().rstrip(".") or type(exc).__name__
    return " ".join(reason.split())


def _glob_prefix(prefix: str) -> str:
    """A SCAN pattern for the keys starting with *prefix*, taken literally."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"


def _write_atomic(target: Path, data: bytes, *, mode: int) -> None:
    """Write *target* through a temporary file: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix="." + target.name[:16] + ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class RedisUnreachable(StoreError):
    """Redis cannot be reached (refused, reset or timed-out connection)."""


class CredentialsRefused(RedisUnreachable):
    """Redis refused the credentials: an outage for a server, a mistake to a setup check."""


def store_folder(url: str, namespace: str) -> str:
    """The name of a store's folder in the cache folder: one per URL and namespace, so
    stores sharing a cache folder never touch each other's copies."""
    return hashlib.sha256(f"{url}\0{namespace}".encode()).hexdigest()[:16]


class RedisStore(Store):
    """A store in Redis, shared by every server of a deployment."""

    def __init__(
        self,
        url: str,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
    ) -> None:
        """*cache_dir*: deploysync's cache folder (default :func:`default_cache_home`);
        this store keeps its local copies in a folder of its own inside it. *namespace*:
        the prefix of its keys (default ``deploysync``), also given as the URL's
        ``?namespace=`` parameter, so that several projects can share one database."""
        redis = _import_redis()
        try:
            urlsplit(url).port  # noqa: B018 - raises for a malformed host or port
        except ValueError as exc:
            # Not echoed: a URL that cannot be read cannot have its password hidden.
            raise StoreError(f"Invalid Redis URL: {exc}") from None
        url, namespace = _split_namespace(url, namespace)
        self.url = url
        self.location = redact(url)
        self.namespace = namespace
        self.channel = f"{namespace}:activations"
        if cache_dir is not None:
            home, chosen = Path(cache_dir).expanduser().absolute(), True
        else:
            home, chosen = default_cache_home()
        self._default_cache = not chosen
        #: The folder of this store's local copies (and of the state a server keeps).
        self.cache_dir = home / store_folder(url, namespace)
        self._cache_ready = False
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._response_error: type[BaseException] = redis.ResponseError
        self._auth_error: type[BaseException] = redis.AuthenticationError
        try:
            self._redis = redis.Redis.from_url(
                url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT
            )
            _check_url(url, self._redis)
        except ValueError as exc:
            raise StoreError(f"Invalid Redis URL {self.location!r}: {exc}") from None
        self._release = self._redis.register_script(RELEASE_SCRIPT)
        self._renew = self._redis.register_script(RENEW_SCRIPT)
        self._activate = self._redis.register_script(ACTIVATE_SCRIPT)
        self._publish = self._redis.register_script(PUBLISH_SCRIPT)
        self._relist = self._redis.register_script(RELIST_SCRIPT)
        self._delete_blob = self._redis.register_script(DELETE_BLOB_SCRIPT)
        self._delete_deployment = self._redis.register_script(DELETE_DEPLOYMENT_SCRIPT)
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._lock_token: str | None = None
        self._renewer: threading.Thread | None = None
        self._renewer_stop = threading.Event()
        self._watch_lock = threading.Lock()
        self._pubsub: Any = None
        self._pubsub_pid = 0
        self._seen: object = None
        self._down: str | None = None  # why the last attempt to reach Redis failed
        self._down_at = 0.0
        self._outage_logged = False
        self._closed = False
        # The state a server read last (see keep_last_known): JSON-ready parts.
        self._keep = False
        self._known: dict[str, Any] = {}
        self._known_lock = threading.Lock()
        self._known_dirty = False
        self._known_loaded = False

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r}, namespace={self.namespace!r})"

    # -- helpers ---------------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def _blob_key(self, digest: str, encoding: str | None = None) -> str:
        check_digest(digest)
        if encoding is None:
            return self._key("blob", digest)
        if encoding not in SUFFIXES:
            raise StoreError(f"Unknown encoding {encoding!r}")
        return self._key("blob", digest, encoding)

    def _manifest_key(self, deployment_id: str) -> str:
        if not is_valid_id(deployment_id):
            raise DeploymentNotFound(f"Unknown deployment {deployment_id[:80]!r}")
        return self._key("deployment", deployment_id)

    def _fail(self, exc: BaseException) -> NoReturn:
        """Turn a redis-py or socket error into a one-line :class:`StoreError`."""
        reason = _reason(exc)
        if isinstance(exc, self._auth_error) or any(m in reason for m in _AUTH_MARKERS):
            # Reachable, but not for us: an outage all the same for a server.
            self._down, self._down_at = reason, time.monotonic()
            raise CredentialsRefused(
                f"Redis at {self.location} refused the credentials: {reason}"
            ) from None
        if isinstance(exc, self._response_error):
            raise StoreError(f"Redis at {self.location} refused a command: {exc}") from None
        self._down, self._down_at = reason, time.monotonic()
        raise RedisUnreachable(f"Cannot reach Redis at {self.location}: {reason}") from None

    @contextlib.contextmanager
    def _io(self) -> Iterator[None]:
        if self._keep and self._down is not None and time.monotonic() - self._down_at < DOWN_RETRY:
            # A server's reads right after one failed: a Redis that hangs would make
            # each wait for the socket timeout. Answer from the last known state.
            raise RedisUnreachable(f"Cannot reach Redis at {self.location}: {self._down}")
        try:
            yield
        except self._errors as exc:
            self._fail(exc)
        self._down = None

    @property
    def unreachable(self) -> bool:
        return self._down is not None

    # -- the last known state, for servers -----------------------------------------------
    def keep_last_known(self) -> None:
        self._keep = True
        # A server reads small keys and blobs in parts; a Redis that hangs is better
        # given up on sooner than a command's writes of large values allow (unless the
        # URL sets its own timeout).
        if "socket_timeout=" not in urlsplit(self.url).query:
            kwargs = self._redis.connection_pool.connection_kwargs
            kwargs["socket_timeout"] = SERVER_SOCKET_TIMEOUT

    def _remember(self, part: str, value: Any) -> None:
        if not self._keep:
            return
        with self._known_lock:
            known = self._known
            if known.get(part) == value:
                return
            known[part] = value
            if part == "ids":
                manifests = known.get("manifests", {})
                known["manifests"] = {i: m for i, m in manifests.items() if i in value}
            self._known_dirty = True

    def _remember_manifest(self, deployment_id: str, raw: bytes) -> None:
        if not self._keep:
            return
        text = raw.decode()
        with self._known_lock:
            manifests = self._known.setdefault("manifests", {})
            if manifests.get(deployment_id) != text:
                manifests[deployment_id] = text
                self._known_dirty = True

    def _recall(self, part: str, exc: RedisUnreachable) -> Any:
        """What the last read of *part* returned, while Redis cannot be reached; else
        *exc* again (a command, or nothing read yet)."""
        if not self._keep:
            raise exc
        with self._known_lock:
            if not self._known_loaded:
                # Parts this process has not read yet come from the last process that
                # did (this one was started while Redis is unreachable).
                self._known_loaded = True
                for key, value in self._read_state().items():
                    self._known.setdefault(key, value)
            if part not in self._known:
                raise exc
            return self._known[part]

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.cache_dir / STATE_FILE).read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            return {}
        found: dict[str, Any] = {}
        if isinstance(data.get("history"), list):
            found["history"] = [str(item) for item in data["history"]]
        if isinstance(data.get("ids"), list):
            found["ids"] = [str(item) for item in data["ids"]]
        if isinstance(data.get("manifests"), dict):
            found["manifests"] = {str(k): str(v) for k, v in data["manifests"].items()}
        probe = data.get("probe")
        if probe is None or isinstance(probe, int | list):
            found["probe"] = probe
        return found

    def _save_state(self) -> None:
        """Write the state read since the last save, atomically (a worker restarted at
        any moment reads the previous file or this one)."""
        state = self.cache_dir / STATE_FILE
        with self._known_lock:
            if not self._known.get("history"):
                # An empty record: a Redis restarted without its data must not erase
                # what servers started during the next outage would serve.
                return
            if not self._known_dirty and state.is_file():  # (a cache cleaner may remove it)
                return
            self._known_dirty = False
            data = json.dumps({"format": STATE_FORMAT, **self._known}, sort_keys=True).encode()
        try:
            if not self._cache_ready:
                self._prepare_cache()
            make_folders(self.cache_dir, 0o700)  # a cache cleaner may have removed it
            _write_atomic(state, data, mode=0o600)
        except (StoreError, OSError):
            with self._known_lock:
                self._known_dirty = True  # the next poll tries again

    # -- configuration ---------------------------------------------------------------------
    def config_warnings(self) -> list[str]:
        try:
            with self._io():
                info = self._redis.info("memory")
        except StoreError:
            return []  # unreachable, or INFO not allowed (a managed Redis): cannot tell
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if int(info.get("maxmemory") or 0) == 0 or policy == "noeviction":
            return []
        return [
            f"Redis at {self.location} evicts keys when full (maxmemory-policy {policy}):"
            " deployments and their assets can vanish under running servers; set"
            " maxmemory-policy noeviction (a full Redis then fails builds instead)"
        ]

    # -- writers' setup --------------------------------------------------------------------
    def ensure_writable(self) -> None:
        with self._io():
            self._redis.ping()
            try:
                # A replica answers PING but refuses writes.
                role = self._redis.info("replication").get("role")
            except self._response_error:
                role = None  # INFO disabled by the provider: writes will tell
        if role not in (None, "master"):
            raise StoreError(f"Redis at {self.location} is a read-only replica")

    def lock(self) -> AbstractContextManager[None]:
        return self._locked()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._lock_depth == 0:
                self._acquire()
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    self._release_lock()

    def _acquire(self) -> None:
        token = secrets.token_hex(16)
        key = self._key("lock")
        wait = LOCK_POLL[0]
        while True:
            with self._io():
                if self._redis.set(key, token, nx=True, px=LOCK_TTL_MS):
                    break
            # Held by another writer: it finishes, or its TTL frees a crashed holder.
            if wait == LOCK_POLL[0]:
                self._waiting()
            time.sleep(wait)
            wait = min(wait * 2, LOCK_POLL[1])
        self._lock_token = token
        self._renewer_stop.clear()
        self._renewer = threading.Thread(
            target=self._keep_lock, args=(token,), name="deploysync-redis-lock", daemon=True
        )
        self._renewer.start()

    def _keep_lock(self, token: str) -> None:
        key = self._key("lock")
        while not self._renewer_stop.wait(LOCK_RENEW_EVERY):
            try:
                if not self._renew(keys=[key], args=[token, LOCK_TTL_MS]):
                    log.warning("Lost the deploysync lock on %s (it expired)", self.location)
                    return
            except Exception as exc:  # the renewer must never die noisily
                log.warning("Cannot renew the deploysync lock on %s: %s", self.location, exc)

    def _release_lock(self) -> None:
        token, self._lock_token = self._lock_token, None
        self._renewer_stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if token is None:
            return
        try:
            self._release(keys=[self._key("lock")], args=[token])
        except self._errors as exc:
            # The TTL frees it; a release error must not hide the body's own outcome.
            log.warning("Cannot release the deploysync lock on %s: %s", self.location, exc)

    # -- blobs -----------------------------------------------------------------------------
    def _parse_variants(self, raw: bytes | None) -> dict[str, int] | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return {str(k): int(v) for k, v in data.items() if k in SUFFIXES}
        except (ValueError, TypeError, AttributeError):
            return {}

    def missing_blobs(self, blobs: Mapping[str, Collection[str]]) -> set[str]:
        keys = [
            (digest, self._blob_key(digest, encoding))
            for digest, encodings in sorted(blobs.items())
            for encoding in (None, *encodings)
        ]
        if not keys:
            return set()
        digests = sorted(blobs)
        with self._io():
            pipe = self._redis.pipeline(transaction=False)
            for _, key in keys:
                pipe.exists(key)
            # The field too: publish and readers take a blob without one as absent (the
            # ``blobs`` hash evicted while the blob keys stayed).
            pipe.hmget(self._key("blobs"), digests)
            *found, fields = pipe.execute()
        lost = {digest for (digest, _), there in zip(keys, found, strict=True) if not there}
        return lost | {d for d, field in zip(digests, fields, strict=True) if field is None}

    def blob_variants(self, digest: str) -> Mapping[str, int] | None:
        check_digest(digest)
        with self._io():
            raw = self._redis.hget(self._key("blobs"), digest)
        return self._parse_variants(raw)

    def put_blob(self, digest: str, data: bytes, variants: Mapping[str, bytes]) -> None:
        check_digest(digest)
        try:
            self._put_blob(digest, data, variants)
        except RedisUnreachable as exc:
            largest = max([len(data), *(len(v) for v in variants.values())])
            if largest < LARGE_VALUE:
                raise
            raise RedisUnreachable(
                f"{exc} (while storing a value of {largest / 2**20:.0f} MB: Redis refuses"
                " values above its proto-max-bulk-len, 512 MB unless set lower)"
            ) from None

    def _put_blob(self, digest: str, data: bytes, variants: Mapping[str, bytes]) -> None:
        keys = {encoding: self._blob_key(digest, encoding) for encoding in variants}
        with self._io():
            known = self._parse_variants(self._redis.hget(self._key("blobs"), digest))
            sizes = dict(known or {})
            sizes.update({encoding: len(payload) for encoding, payload in variants.items()})
            pipe = self._redis.pipeline(transaction=True)
            for encoding, payload in variants.items():
                pipe.set(keys[encoding], payload)
            # Always: the same bytes again, or a blob whose key was evicted restored.
            pipe.set(self._blob_key(digest), data)
            pipe.hset(self._key("blobs"), digest, json.dumps(sizes, sort_keys=True))
            pipe.execute()

    def read_blob(self, digest: str, encoding: str | None = None) -> bytes:
        key = self._blob_key(digest, encoding)
        with self._io():
            data: bytes | None = self._redis.get(key)
        if data is None:
            raise StoreError(f"Blob {digest} ({encoding or 'identity'}) is missing")
        return data

    def trim_cache(self, keep: set[str], older_than: float = CACHE_GRACE) -> int:
        if not self.cache_dir.is_dir():
            return 0
        cutoff = time.time() - older_than
        freed = 0
        for folder in self.cache_dir.iterdir():
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                digest = entry.name[:64]
                if digest in keep or not DIGEST_PATTERN.fullmatch(digest):
                    continue
                with contextlib.suppress(OSError):
                    st = entry.stat()
                    if st.st_mtime < cutoff:
                        entry.unlink()
                        freed += st.st_size
        return freed

    def _cached(self, digest: str, encoding: str | None) -> Path:
        return self.cache_dir / digest[:2] / (digest + (SUFFIXES[encoding] if encoding else ""))

    def _prepare_cache(self) -> None:
        """Create the cache folder, private to this user; refuse a derived one that another
        user could write (a shared temporary folder), since its files are served as they are.

        The folders deploysync names (this store's, ``deploysync``, ``deploysync-<uid>``)
        must be writable by this user only; the one holding them (``~/.cache``) must be
        this user's and not writable by everyone.
        """
        try:
            make_folders(self.cache_dir, 0o700)
            if self._default_cache and hasattr(os, "getuid"):
                home = self.cache_dir.parent
                folders = [(self.cache_dir, 0o022), (home, 0o022), (home.parent, 0o002)]
                if home.parent.name.startswith("deploysync-"):  # the temporary folder's
                    folders[-1] = (home.parent, 0o022)
                for folder, loose in folders:
                    st = folder.stat()
                    if st.st_uid != os.getuid() or st.st_mode & loose:
                        message = f"Blob cache folder '{folder}' is not private to this user"
                        raise CacheError(message)
        except OSError as exc:
            raise CacheError(f"Cannot create the blob cache '{self.cache_dir}': {exc}") from None
        self._cache_ready = True

    def blob_path(self, digest: str, encoding: str | None = None) -> str:
        key = self._blob_key(digest, encoding)
        if not self._cache_ready:
            self._prepare_cache()
        target = self._cached(digest, encoding)
        if target.is_file():
            return str(target)
        with self._io():
            pipe = self._redis.pipeline(transaction=True)
            pipe.get(key)
            pipe.hget(self._key("blobs"), digest)
            data, meta = pipe.execute()
        self._keep_copy(digest, encoding, data, meta)
        return str(target)

    def _keep_copy(
        self, digest: str, encoding: str | None, data: bytes | None, meta: bytes | None
    ) -> None:
        """Check fetched bytes and write them to the local cache."""
        sizes = self._parse_variants(meta)
        if data is None or sizes is None:
            raise StoreError(f"Blob {digest} ({encoding or 'identity'}) is missing")
        # Never trust bytes from the network blindly: the name is their sha256; a
        # variant has no hash of its own, so check at least its recorded size.
        if encoding is None:
            if hashlib.sha256(data).hexdigest() != digest:
                raise StoreError(f"Blob {digest} in {self.location} is corrupt (sha256 mismatch)")
        elif sizes.get(encoding) != len(data):
            raise StoreError(f"Blob {digest} ({encoding}) in {self.location} is corrupt")
        self._write_cache(self._cached(digest, encoding), data)

    def prefetch(self, blobs: Iterable[tuple[str, str | None]]) -> None:
        if not self._cache_ready:
            self._prepare_cache()
        wanted = [
            (digest, encoding)
            for digest, encoding in dict.fromkeys(blobs)
            # (an encoding a newer build knows, listed by a manifest: not this one's)
            if (encoding is None or encoding in SUFFIXES)
            and not self._cached(check_digest(digest), encoding).is_file()
        ]
        # Batches bounded in count: a reply of a few MB at most in the usual case, and a
        # server's other requests are not held behind one huge read.
        for start in range(0, len(wanted), PREFETCH_BATCH):
            batch = wanted[start : start + PREFETCH_BATCH]
            with self._io():
                pipe = self._redis.pipeline(transaction=False)
                for digest, encoding in batch:
                    pipe.get(self._blob_key(digest, encoding))
                pipe.hmget(self._key("blobs"), [digest for digest, _ in batch])
                *found, metas = pipe.execute()
            for (digest, encoding), data, meta in zip(batch, found, metas, strict=True):
                with contextlib.suppress(StoreError):  # blob_path fetches and tells it
                    self._keep_copy(digest, encoding, data, meta)

    def _write_cache(self, target: Path, data: bytes) -> None:
        try:
            make_folders(target.parent, 0o700)
            _write_atomic(target, data, mode=0o644)  # readers see no file or the whole one
        except OSError as exc:
            raise CacheError(f"Cannot write the blob cache '{self.cache_dir}': {exc}") from None

    def drop_copy(self, digest: str, encoding: str | None = None) -> None:
        check_digest(digest)
        with contextlib.suppress(OSError):
            self._cached(digest, encoding).unlink()

    def all_blobs(self) -> Iterator[str]:
        with self._io():
            found = [
                d.decode() if isinstance(d, bytes) else str(d)
                for d in self._redis.hkeys(self._key("blobs"))
            ]
        return iter(sorted(found))

    def _guarded(self, script: Any, what: str, keys: list[str], args: list[Any]) -> Any:
        """Run a write *script* that refuses once the lock taken for it is another's."""
        try:
            return script(keys=[self._key("lock"), *keys], args=[self._lock_token or "", *args])
        except self._response_error as exc:
            if "lock lost" not in str(exc):
                self._fail(exc)
            raise StoreError(
                f"Cannot {what}: the lock on {self.location} expired while this command was"
                f" paused (over {LOCK_TTL_MS // 1000} s) and another writer may hold it;"
                " run it again (blobs it stored unused go at the next prune)"
            ) from None
        except self._errors as exc:
            self._fail(exc)

    def delete_blob(self, digest: str) -> int:
        keys = [self._blob_key(digest, encoding) for encoding in (*ENCODINGS, None)]
        # The field goes with the keys, at once: the blob stops existing for every reader.
        freed = self._guarded(
            self._delete_blob, f"delete blob {digest}", [self._key("blobs"), *keys], [digest]
        )
        for encoding in (*ENCODINGS, None):
            with contextlib.suppress(OSError):
                self._cached(digest, encoding).unlink()
        return int(freed)

    # -- manifests -------------------------------------------------------------------------
    def publish(self, deployment: Deployment, *, present: Collection[str] = ()) -> bool:
        # One HMGET checks every blob: nothing to gain from *present*.
        key = self._manifest_key(deployment.id)
        what = f"publish {deployment.id}"
        with self.lock():
            keys = [key, self._key("deployments"), self._key("stamps")]
            if self._guarded(self._relist, what, keys, [deployment.id, secrets.token_hex(8)]):
                return False  # published already
            with self._io():
                digests = sorted(deployment.digests())
                found = self._redis.hmget(self._key("blobs"), digests) if digests else []
            for digest, meta in zip(digests, found, strict=True):
                if meta is None:
                    raise StoreError(f"Cannot publish {deployment.id}: blob {digest} is missing")
            # Servers must be able to serve its assets before any server pinned to it
            # renders a page (a container rolling in before the activation): the script
            # changes the probe and wakes the watchers now, not at their next rescan.
            keys = [key, self._key("deployments"), self._key("stamps"), self._key("published")]
            message = json.dumps({"published": deployment.id})
            stamp = secrets.token_hex(8)
            args = [deployment.dumps(), deployment.id, stamp, self.channel, message]
            self._guarded(self._publish, what, keys, args)
            return True

    def load(self, deployment_id: str) -> Deployment:
        key = self._manifest_key(deployment_id)
        try:
            with self._io():
                raw: bytes | None = self._redis.get(key)
        except RedisUnreachable as exc:
            known = self._recall("manifests", exc).get(deployment_id)
            if known is None:
                raise
            raw = known.encode()
            remember = False
        else:
            remember = True
        if raw is None:
            raise DeploymentNotFound(f"Unknown deployment {deployment_id!r} in {self.location}")
        try:
            deployment = Deployment.loads(raw)
        except ManifestError as exc:
            raise ManifestError(f"{key} in {self.location}: {exc}") from None
        if deployment.id != deployment_id:
            raise ManifestError(f"Manifest {key} names deployment {deployment.id!r}")
        if remember:
            self._remember_manifest(deployment_id, raw)
        return deployment

    def deployment_stamp(self, deployment_id: str) -> str | None:
        # The token its publication drew, while its manifest is there (not evicted). Two
        # reads in one round trip, not a transaction: the answer a build relies on is
        # read under the writers' lock, which every publication and deletion holds.
        if not is_valid_id(deployment_id):
            return None
        with self._io():
            pipe = self._redis.pipeline(transaction=False)
            pipe.exists(self._manifest_key(deployment_id))
            pipe.hget(self._key("stamps"), deployment_id)
            there, stamp = pipe.execute()
        if not there or stamp is None:
            return None
        return stamp.decode() if isinstance(stamp, bytes) else str(stamp)

    def ids(self) -> list[str]:
        try:
            with self._io():
                members = self._redis.smembers(self._key("deployments"))
        except RedisUnreachable as exc:
            return list(self._recall("ids", exc))
        found = (m.decode() if isinstance(m, bytes) else str(m) for m in members)
        ids = sorted(ident for ident in found if is_valid_id(ident))
        self._remember("ids", ids)
        return ids

    def stray_ids(self, listed: Collection[str]) -> list[str]:
        prefix = self._key("deployment", "")
        with self._io():
            keys = list(self._redis.scan_iter(match=_glob_prefix(prefix), count=1000))
        found = ((k.decode() if isinstance(k, bytes) else str(k))[len(prefix) :] for k in keys)
        return sorted(i for i in found if is_valid_id(i) and i not in listed)

    def announce(self, deployment_id: str) -> None:
        with self._io():
            pipe = self._redis.pipeline(transaction=True)
            pipe.incr(self._key("published"))
            pipe.publish(self.channel, json.dumps({"published": deployment_id}))
            pipe.execute()

    def exists(self, deployment_id: str) -> bool:
        if not is_valid_id(deployment_id):
            return False
        # The manifest, not the set: an id the set lost (or kept without its manifest,
        # evicted) is what a build repairs.
        with self._io():
            return bool(self._redis.exists(self._manifest_key(deployment_id)))

    def delete_deployment(self, deployment_id: str) -> None:
        keys = [
            self._key("deployments"),
            self._manifest_key(deployment_id),
            self._key("stamps"),
            self._key("published"),
        ]
        what = f"delete deployment {deployment_id}"
        self._guarded(self._delete_deployment, what, keys, [deployment_id])

    # -- holds by running servers -----------------------------------------------------------
    def hold(self, deployment_id: str, ttl: float = HOLD_TTL) -> None:
        validate_id(deployment_id)
        # A key that expires by itself: a stopped server's hold lapses without cleanup.
        with self._io():
            self._redis.set(self._key("hold", deployment_id), b"1", px=max(1, int(ttl * 1000)))

    def held(self) -> set[str]:
        prefix = self._key("hold", "")
        with self._io():
            keys = list(self._redis.scan_iter(match=_glob_prefix(prefix), count=500))
        found = set()
        for key in keys:
            ident = (key.decode() if isinstance(key, bytes) else str(key))[len(prefix) :]
            if is_valid_id(ident):
                found.add(ident)
        return found

    # -- activation ------------------------------------------------------------------------
    def activations(self) -> list[Activation]:
        try:
            with self._io():
                raw = self._redis.lrange(self._key("history"), 0, -1)
        except RedisUnreachable as exc:
            raw = self._recall("history", exc)
        try:
            record = [Activation.from_json(json.loads(item)) for item in raw]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"Corrupt activation record in {self.location}: {exc}") from None
        self._remember("history", [i.decode() if isinstance(i, bytes) else i for i in raw])
        return record

    def current(self) -> str | None:
        try:
            with self._io():
                raw = self._redis.get(self._key("current"))
        except RedisUnreachable as exc:
            history = self._recall("history", exc)
            raw = history[-1] if history else None
        if raw is None:
            return None
        try:
            return Activation.from_json(json.loads(raw)).id
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"Corrupt activation record in {self.location}: {exc}") from None

    def last_seq(self) -> int:
        with self._io():
            raw = self._redis.get(self._key("seq"))
        return int(raw) if raw is not None else 0

    def _record_activation(self, activation: Activation) -> None:
        record = json.dumps(activation.to_json(), sort_keys=True)
        message = json.dumps({"id": activation.id, "seq": activation.seq})
        keys = [
            self._key("seq"),
            self._key("history"),
            self._key("current"),
            self._manifest_key(activation.id),
            self._key("deployments"),
        ]
        try:
            self._activate(
                keys=keys,
                args=[activation.seq, record, HISTORY_LIMIT, self.channel, message, activation.id],
            )
        except self._response_error as exc:
            raise StoreError(f"Cannot activate {activation.id} in {self.location}: {exc}") from None
        except self._errors as exc:
            self._fail(exc)

    def probe(self) -> Hashable:
        try:
            with self._io():
                raw, published = self._redis.mget(self._key("seq"), self._key("published"))
        except RedisUnreachable as exc:
            known = self._recall("probe", exc)
            return tuple(known) if isinstance(known, list) else known
        value = int(raw) if raw is not None else None
        self._seen = value
        if published is None:
            token: Hashable = value  # nothing published yet (None for an empty store)
        else:
            token = (value, int(published))
        self._remember("probe", list(token) if isinstance(token, tuple) else token)
        return token

    def wait_for_change(self, timeout: float) -> None:
        """Block on the activation channel up to *timeout* seconds.

        Never raises: while Redis is unreachable it logs once and sleeps, and the next
        call subscribes again. A message may wake it spuriously; callers re-probe.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        if self._keep:
            self._save_state()
        with self._watch_lock:
            if self._closed:
                return
            self._log_outage()
            if self._pubsub_pid != os.getpid():
                # A forked child (a pre-forking server) must not read its parent's
                # subscription socket: forget it without closing it, and subscribe anew.
                self._pubsub = None
            try:
                if self._pubsub is None:
                    self._subscribe()
                    # An activation between the caller's probe and our subscription would
                    # otherwise wait for the next one: compare with the last probe.
                    raw = self._redis.get(self._key("seq"))
                    self._down = None
                    self._log_outage()
                    if (int(raw) if raw is not None else None) != self._seen:
                        return
                while (left := deadline - time.monotonic()) > 0:
                    if self._pubsub.get_message(timeout=left) is not None:
                        return
                return
            except Exception as exc:  # includes a dead socket; never let the watcher die
                self._drop_pubsub()
                if self._closed:
                    return
                self._down, self._down_at = _reason(exc), time.monotonic()
                self._log_outage()
        left = deadline - time.monotonic()
        if left > 0:
            time.sleep(left)

    def _log_outage(self) -> None:
        """Say once that Redis became unreachable, and once that it is back.

        Only the watcher of a serving process calls this: a command reports an outage
        in its own one-line error, and a server's reads during an outage are quiet.
        """
        if self._down is not None and not self._outage_logged:
            self._outage_logged = True
            if not self._keep:
                serving = ""
            elif self._known.get("history") or self._known.get("ids"):
                serving = "; serving what was last read from it until it is back"
            else:
                serving = "; nothing was read from it yet, so no deployment is served"
            # Wrong credentials are an outage for a server too, but said as they are.
            refused = any(marker in self._down for marker in _AUTH_MARKERS)
            what = "refused the credentials" if refused else "is unreachable"
            log.warning("Redis at %s %s: %s%s", self.location, what, self._down, serving)
        elif self._down is None and self._outage_logged:
            self._outage_logged = False
            log.warning("Redis at %s is reachable again", self.location)

    def _subscribe(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
        except BaseException:
            pubsub.close()
            raise
        self._pubsub = pubsub
        self._pubsub_pid = os.getpid()

    def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()

    def close(self) -> None:
        # Not under the watcher's lock: closing the subscription's socket wakes a thread
        # blocked in wait_for_change, which then returns at once.
        self._closed = True
        self._drop_pubsub()
        with contextlib.suppress(Exception):
            self._redis.close()
