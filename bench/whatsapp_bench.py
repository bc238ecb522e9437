#!/usr/bin/env python3
"""A year of WhatsApp's nightly crypt15 backups imported into one repository.

Every night WhatsApp encrypts and uploads its whole message database again. This
benchmark grows a chat database day by day, has the interop peer (wa-crypt-tools'
`waencrypt`, installed in a venv under target/bench-tools) write that night's
`msgstore-YYYY-MM-DD.1.db.crypt15`, imports it with `backlock import-whatsapp`, and
prints what the repository holds against the sum of the crypt15 files (what WhatsApp
re-uploaded), with the import's median wall and CPU time. Selected snapshots are
dumped and compared with the database of their day. See bench/README.md.
"""

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

WA_VERSION = "0.1.0"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def du_sb(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def ensure_peer(root: Path) -> Path:
    venv = root / "target" / "bench-tools" / "wa-crypt-tools"
    if not (venv / "bin" / "waencrypt").exists():
        log(f"installing wa-crypt-tools {WA_VERSION} into {venv}")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                        "--disable-pip-version-check", f"wa-crypt-tools=={WA_VERSION}"],
                       check=True)
    return venv / "bin"


def build(root: Path, skip: bool) -> Path:
    if not skip:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "backlock-cli"],
                       cwd=root, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
    return target / "release" / "backlock"


WORDS = None


def words(rng):
    global WORDS
    if WORDS is None:
        vocab = random.Random(7)
        WORDS = ["".join(vocab.choice("abcdefghijklmnopqrstuvwxyz")
                         for _ in range(vocab.randint(2, 9))) for _ in range(3000)]
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))


SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
  _id INTEGER PRIMARY KEY AUTOINCREMENT, chat_row_id INTEGER, from_me INTEGER,
  key_id TEXT, timestamp INTEGER, status INTEGER, text_data TEXT, starred INTEGER);
CREATE INDEX IF NOT EXISTS message_chat ON message(chat_row_id, timestamp);
CREATE TABLE IF NOT EXISTS receipt (message_row_id INTEGER, device INTEGER,
  read_timestamp INTEGER, PRIMARY KEY (message_row_id, device));
CREATE TABLE IF NOT EXISTS chat (_id INTEGER PRIMARY KEY, last_message_row_id INTEGER,
  unseen INTEGER);
"""


class Chats:
    """A message database as a chat app keeps it: messages appended, statuses and
    receipts updated, a few messages starred or deleted, chat rows touched."""

    def __init__(self, path: Path, seed: int):
        self.db = sqlite3.connect(path)
        self.db.executescript(SCHEMA)
        self.rng = random.Random(seed)
        self.chats = 120
        self.db.executemany("INSERT OR IGNORE INTO chat VALUES (?, 0, 0)",
                            [(c,) for c in range(self.chats)])
        self.db.commit()

    def messages(self, n: int, day: int):
        rng = self.rng
        base = 1_700_000_000 + day * 86400
        rows = []
        for _ in range(n):
            chat = int(rng.paretovariate(1.2)) % self.chats
            rows.append((chat, rng.random() < 0.4, "%016x" % rng.getrandbits(64),
                         base + rng.randint(0, 86399), 13, words(rng), 0))
        self.db.executemany(
            "INSERT INTO message (chat_row_id, from_me, key_id, timestamp, status, "
            "text_data, starred) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        last = self.db.execute("SELECT max(_id) FROM message").fetchone()[0]
        receipts = [(last - i, d, base + 3600) for i in range(n) for d in range(2)]
        self.db.executemany("INSERT OR REPLACE INTO receipt VALUES (?, ?, ?)", receipts)
        self.db.execute("UPDATE message SET status = 5 WHERE _id > ?", (last - n,))
        for chat in {r[0] for r in rows}:
            self.db.execute("UPDATE chat SET last_message_row_id = ?, unseen = ? "
                            "WHERE _id = ?", (last, rng.randint(0, 9), chat))
        for _ in range(3):
            self.db.execute("UPDATE message SET starred = 1 WHERE _id = ?",
                            (rng.randint(1, last),))
        for _ in range(max(1, n // 100)):
            self.db.execute("DELETE FROM message WHERE _id = ?", (rng.randint(1, last),))
        self.db.commit()

    def size(self) -> int:
        return self.db.execute("PRAGMA page_count").fetchone()[0] * \
            self.db.execute("PRAGMA page_size").fetchone()[0]


def cpu_of_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo-root", type=Path, required=True)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--start-mb", type=float, default=20.0,
                    help="the database's size on the first night (default 20)")
    ap.add_argument("--messages-per-day", type=int, default=400)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args()

    root = args.repo_root.resolve()
    backlock = build(root, args.skip_build)
    peer = ensure_peer(root)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="backlock-wa-bench-",
                                                 dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, BACKLOCK_HOME=str(work / "home"),
               XDG_CACHE_HOME=str(work / "cache"), BACKLOCK_REPO=str(work / "repo"),
               BACKLOCK_KEY_FILE=str(work / "backlock.key"))
    init = subprocess.run([str(backlock), "init", "--key-only", "--yes", "--json"],
                          env=env, check=True, capture_output=True, text=True)
    (work / "backlock.key").write_text(json.loads(init.stdout)["key"])
    wa_key = work / "wa.key"
    wa_key.write_text(os.urandom(32).hex())
    phone = work / "Databases"
    phone.mkdir(exist_ok=True)
    db_path = work / "msgstore.db"
    chats = Chats(db_path, seed=20240601)
    while chats.size() < args.start_mb * 1e6:
        chats.messages(5000, 0)
    first_size = chats.size()
    log(f"day 0: database {first_size / 1e6:.1f} MB; {args.days} nights follow")

    first = date(2025, 1, 1)
    crypt15_total = 0
    walls, cpus, hashes = [], [], {}
    started = time.monotonic()
    for day in range(args.days):
        if day:
            chats.messages(args.messages_per_day, day)
        night = first + timedelta(days=day)
        name = f"msgstore-{night.isoformat()}.1.db.crypt15"
        enc = phone / name
        # The peer takes the key as its 64 hex digits (a benchmark's throwaway key).
        subprocess.run([str(peer / "waencrypt"), wa_key.read_text(), str(db_path),
                        str(enc)], check=True, capture_output=True)
        crypt15_total += enc.stat().st_size
        hashes[day] = hashlib.sha256(db_path.read_bytes()).hexdigest()
        cpu0, t0 = cpu_of_children(), time.monotonic()
        out = subprocess.run([str(backlock), "import-whatsapp", "--wa-key-hex-file",
                              str(wa_key), "--json", str(enc)],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"import of {name} failed ({out.returncode}): {out.stderr}")
        walls.append(time.monotonic() - t0)
        cpus.append(cpu_of_children() - cpu0)
        # The phone keeps a week of nightly backups.
        old = phone / f"msgstore-{(night - timedelta(days=7)).isoformat()}.1.db.crypt15"
        old.unlink(missing_ok=True)
        if day % 30 == 0 or day == args.days - 1:
            log(f"night {day + 1}: database {chats.size() / 1e6:.1f} MB, crypt15 "
                f"{enc.stat().st_size / 1e6:.1f} MB, repository {du_sb(work / 'repo') / 1e6:.1f} MB, "
                f"import {walls[-1]:.2f} s")

    # Snapshots restore to their night's database.
    listed = json.loads(subprocess.run([str(backlock), "snapshots", "--json"], env=env,
                                       check=True, capture_output=True, text=True).stdout)
    assert len(listed) == args.days, f"{len(listed)} snapshots for {args.days} nights"
    for day in sorted({0, args.days // 2, args.days - 1}):
        got = subprocess.run([str(backlock), "dump", listed[day]["id"], "msgstore.db"],
                             env=env, check=True, capture_output=True).stdout
        assert hashlib.sha256(got).hexdigest() == hashes[day], f"night {day + 1} differs"

    repo = du_sb(work / "repo")
    result = {
        "nights": args.days,
        "database_first_mb": round(first_size / 1e6, 1),
        "database_last_mb": round(chats.size() / 1e6, 1),
        "crypt15_sum_mb": round(crypt15_total / 1e6, 1),
        "repository_mb": round(repo / 1e6, 1),
        "repository_over_crypt15_sum": round(repo / crypt15_total, 4),
        "import_wall_median_s": round(statistics.median(walls), 3),
        "import_cpu_median_s": round(statistics.median(cpus), 3),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(f"""
A year of nightly WhatsApp backups ({args.days} nights, {args.messages_per_day} messages a day)
  database                 {result['database_first_mb']} MB -> {result['database_last_mb']} MB
  crypt15 files, summed    {result['crypt15_sum_mb']} MB   (what WhatsApp uploads, night after night)
  backlock repository      {result['repository_mb']} MB   ({result['repository_over_crypt15_sum']:.2%} of the crypt15 sum)
  import per night         {result['import_wall_median_s']} s wall, {result['import_cpu_median_s']} CPU s (medians)
  checked: nights {sorted({1, args.days // 2 + 1, args.days})} dump to their database byte for byte""")
    (work / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    if not args.keep:
        for p in ["repo", "cache", "home", "Databases", "msgstore.db"]:
            shutil.rmtree(work / p, ignore_errors=True) if (work / p).is_dir() \
                else (work / p).unlink(missing_ok=True)
        log(f"results in {work / 'results.json'}")


if __name__ == "__main__":
    main()
