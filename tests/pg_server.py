"""A throw-away PostgreSQL server for the tests: Debian's binaries, a temporary data folder,
127.0.0.1 only, trust authentication; run as an unprivileged user when we are root (postgres
refuses to run as root).

    python tests/pg_server.py start DIR   # prints the server's URL (without a database)
    python tests/pg_server.py stop DIR
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

USER = "zsearch"  # the database role


def find_bin() -> Optional[Path]:
    """The folder holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _os_user() -> Optional[str]:
    import pwd  # POSIX-only, as this helper is (the CI machine is Linux)
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")


def _as_user(cmd: list[str], user: Optional[str]) -> list[str]:
    return cmd if user is None else ["runuser", "-u", user, "--", *cmd]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: Path) -> str:
    bin_dir = find_bin()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl); apt-get install postgresql")
    user = _os_user()
    folder.mkdir(parents=True, exist_ok=True)
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir(exist_ok=True)
    if user is not None:
        import pwd
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        os.chown(sockets, entry.pw_uid, entry.pw_gid)
    port = _free_port()
    def run(cmd: list[str]) -> None:
        done = subprocess.run(_as_user(cmd, user), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, cwd="/")
        if done.returncode:
            raise RuntimeError(f"{Path(cmd[0]).name} failed: {done.stderr.strip()[-500:]}")

    run([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off -c max_connections=200"
    run([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"),
         "-w", "-t", "60", "start"])
    (folder / "port").write_text(str(port))
    return f"postgresql+psycopg2://{USER}@127.0.0.1:{port}"


def stop(folder: Path) -> None:
    bin_dir = find_bin()
    if bin_dir is None or not (folder / "data").is_dir():
        return
    subprocess.run(_as_user([str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "-w", "stop"],
                            _os_user()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")


def create_database(server_url: str, name: str) -> str:
    """A new empty database on the server; its URL."""
    import psycopg2
    host_port = server_url.rsplit("@", 1)[1]
    host, port = host_port.split(":")
    conn = psycopg2.connect(host=host, port=int(port), user=USER, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return f"{server_url}/{name}"


if __name__ == "__main__":
    action, where = sys.argv[1], Path(sys.argv[2])
    if action == "start":
        print(start(where))
    else:
        stop(where)
