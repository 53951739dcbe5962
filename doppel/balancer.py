"""Inference replicas behind nginx: one address for clients, one persona's calls on one replica.

nginx (Debian's package: `grpc_pass` is built in) balances per call, not per connection, and
hashes each call by its `x-doppel-model` header (`consistent`: a replica that leaves moves only
its own models), so a persona's requests batch together on one replica and many personas spread
over all of them. Doppel's clients send that header with every call that names a model
(`doppel.rpc.channel.model_metadata`); a call that names none (health, listing) goes to the
replica the empty key hashes to.

A replica that refuses connections or fails a call is left out for `FAIL_S`. A call it refused
is passed to the next replica by nginx itself. A call it had taken and then died with cannot be:
grpc_pass streams the request body and keeps no copy to send again. nginx answers it with a
trailers-only UNAVAILABLE (`@unavailable`), which gRPC clients' retry policy resends (Doppel's
channels retry UNAVAILABLE: `doppel.rpc.channel`), to another replica; a Doppel call changes
nothing a second attempt could repeat. A stream whose first piece had reached the caller fails
with UNAVAILABLE, as it would without a balancer.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

from doppel.errors import FailedPrecondition
from doppel.rpc.channel import MODEL_HEADER as HEADER

FAIL_S = 10  # how long a replica that failed a call is left out
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def nginx() -> str:
    """nginx's executable ($DOPPEL_NGINX, PATH, then where Debian and source builds put it)."""
    for candidate in (os.environ.get("DOPPEL_NGINX"), shutil.which("nginx"), *NGINX_PATHS):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FailedPrecondition("inference replicas are balanced by nginx, which is not installed: "
                             "`apt-get install nginx` (Debian), or set DOPPEL_NGINX to its executable")


def free_addrs(n: int, host: str = "127.0.0.1") -> list[str]:
    """`n` addresses on `host` whose ports were free a moment ago."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [f"{host}:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()


def config(listen: str, replicas: Sequence[str], folder: Path, *, max_message_mb: int = 64, stdio: bool = False) -> str:
    """An nginx.conf serving gRPC at `listen` from `replicas`, its scratch under `folder`, its logs
    there too or (`stdio`, in a container) on stderr and stdout.

    The access log says, for each call, the model and the replica(s) it went to."""
    servers = "\n".join(f"        server {addr} max_fails=1 fail_timeout={FAIL_S}s;" for addr in replicas)
    temp = "\n".join(f"    {kind}_temp_path {folder / 'tmp' / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# Written by Doppel (doppel/balancer.py) for this run; rewritten at every start.
worker_processes 1;
daemon off;
pid {folder / 'nginx.pid'};
error_log {'stderr' if stdio else folder / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
{temp}
    log_format calls '$time_iso8601 $request_uri model=$http_{HEADER.replace('-', '_')} '
                     'upstream="$upstream_addr" status=$status grpc=$sent_trailer_grpc_status';
    access_log {'/dev/stdout' if stdio else folder / 'access.log'} calls;
    upstream inference {{
        hash $http_{HEADER.replace('-', '_')} consistent;
{servers}
        keepalive 64;
    }}
    server {{
        listen {listen} http2;
        client_max_body_size {max_message_mb}m;
        grpc_read_timeout 24h;
        grpc_send_timeout 24h;
        grpc_socket_keepalive on;
        location / {{
            grpc_pass grpc://inference;
            grpc_next_upstream error timeout non_idempotent;
            grpc_next_upstream_tries {len(replicas)};
            error_page 502 503 504 = @unavailable;
        }}
        # A call nginx could not pass on (its replica died with it in flight, or none answers) ends as
        # gRPC's UNAVAILABLE with no response headers, which gRPC clients' retry policies retry.
        location @unavailable {{
            default_type application/grpc;
            add_header grpc-status 14 always;
            add_header grpc-message "no inference replica answered this call" always;
            return 204;
        }}
    }}
}}
"""


def write_config(listen: str, replicas: Sequence[str], folder: Path, *, max_message_mb: int = 64, stdio: bool = False) -> Path:
    """Write `config` to `folder`/nginx.conf (and its scratch folders); the file."""
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / "tmp" / kind).mkdir(parents=True, exist_ok=True)
    path = folder / "nginx.conf"
    path.write_text(config(listen, replicas, folder, max_message_mb=max_message_mb, stdio=stdio))
    return path


def command(conf: Path, *, stdio: bool = False) -> list[str]:
    """The nginx command line that serves `conf` in the foreground."""
    return [nginx(), "-c", str(conf), "-p", str(conf.parent), "-e", "stderr" if stdio else str(conf.parent / "error.log")]
