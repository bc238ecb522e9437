"""Many-small-files mode of the backup benchmark (`scripts/bench-backup --files N`).

Issue "ten million files with flat memory": backlock's peak RSS must not grow with the
number of files. For each N it generates (once, deterministically, reused across runs)
a tree of N small files, then per repetition and per tool, each into a fresh repository:

  initial    first backup of the tree
  unchanged  second backup, nothing changed
  changed    1% of the files rewritten or appended to (deterministic), then a backup
  restore    full restore of the latest snapshot into a fresh directory, verified
             by the sha256 of every file against the tree
  check      the tool's check of the repository's structure (indexes, snapshots,
             trees, that every pack is there; no pack data read)

Wall time and peak RSS (/usr/bin/time) of every phase, page cache dropped before each;
the tree is put back as generated after each repetition. Dispatched from
backup_bench.main; it reuses that module's helpers (run, median, verify, caches, tools)
and rustic from peers.py.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import random
import shlex
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

import backup_bench as bb
from backup_bench import BenchError, fmt_bytes, fnum, log, median, run
from peers import Rustic, ensure_rustic

FILES_TOOLS = ("backlock", "backlock-s3", "restic", "rustic")
FILES_DEFAULT_TOOLS = ("backlock", "restic", "rustic")
PEERS = ("restic", "rustic")
PHASES = (("initial", "initial backup"), ("unchanged", "unchanged backup"),
          ("changed", "changed 1% backup"), ("restore", "restore"),
          ("check", "check (structure)"))
FILES_SEED = 20240701
DEFAULT_WORKDIR = Path("/var/tmp/backlock-bench-files")
WORKDIR_MARKER = ".backlock-files-bench"
RSS_TARGET_MIB = 100.0
RSS_GROWTH_TARGET = 1.2
SPEEDUP_TARGET = bb.SPEEDUP_TARGET
CHANGE_FRACTION = 0.01

# Tree shape. Bump GEN_VERSION whenever the generator changes: kept trees are then rebuilt.
GEN_VERSION = 1
SIZE_MU = math.log(3000)        # median file size 3 kB
SIZE_SIGMA = 1.0
SIZE_MAX = 1 << 20
EMPTY_FRACTION = 0.02
TEXT_FRACTION = 0.5             # compressible (JSON-ish lines); the rest random bytes
POOL_BYTES = 16 << 20           # text pool that compressible files are cut from
N_TABLES = 64                   # letter permutations applied to cut text, so files differ
EST_FILE_BYTES = 7000           # disk per file: mean size 3000·e^(σ²/2) ≈ 4.9 kB, plus blocks


def t_files_tool(n: int, data_bytes: int) -> float:
    """Timeout of one timed run: generous per file and per byte."""
    return bb.t_tool(data_bytes / 1e9) + 0.02 * n


# --------------------------------------------------------------------------- arguments

def parse_counts(s: str):
    """'2000', '100k', '1m', '1.5m' or a comma-separated list of them -> [int, ...]."""
    import argparse
    out = []
    for part in s.split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        try:
            v = round(float(part[:-1] if mult > 1 else part) * mult)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a file count: {part!r}") from None
        if not 1 <= v <= 100_000_000:
            raise argparse.ArgumentTypeError(f"file count out of range: {part}")
        out.append(v)
    if not out:
        raise argparse.ArgumentTypeError("no file counts")
    return sorted(set(out))


def fmt_count(n: int) -> str:
    """1000000 -> '1m', 100000 -> '100k', 2500 -> '2500'."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


# --------------------------------------------------------------------------- the tree

def plan_tree(n: int, seed: int):
    """Yield (index, relative path, size, kind) for the N files of the tree; kind is
    'text' or 'random'. Cheap (no content), deterministic in (n, seed), so the harness
    can walk the plan again to pick the files it changes.

    Directories: leaves of 20-300 files (90%) or 500-3000 (10%, the few large ones),
    under two levels of ~sqrt(leaves) fan-out (depth 3); 30% of leaves move half of
    their files one level further down (depth 4)."""
    rnd = random.Random(seed * 7 + 1)
    leaves = []
    total = 0
    while total < n:
        k = rnd.randint(500, 3000) if rnd.random() < 0.10 else rnd.randint(20, 300)
        k = min(k, n - total)
        leaves.append((k, rnd.random() < 0.30))
        total += k
    fan = max(2, math.ceil(math.sqrt(len(leaves))))
    i = 0
    for li, (k, split) in enumerate(leaves):
        leaf = f"d{li // fan:03d}/d{li % fan:03d}"
        for j in range(k):
            kind = "text" if rnd.random() < TEXT_FRACTION else "random"
            if rnd.random() < EMPTY_FRACTION:
                size = 0
            else:
                size = min(SIZE_MAX, int(rnd.lognormvariate(SIZE_MU, SIZE_SIGMA)))
            ext = ("json", "txt", "log")[j % 3] if kind == "text" else ("bin", "jpg", "dat")[j % 3]
            sub = f"{leaf}/sub" if split and j % 2 else leaf
            yield i, f"{sub}/f{j:05d}.{ext}", size, kind
            i += 1


class TextSource:
    """Compressible, text-like content: JSON-ish chat lines from a fixed vocabulary,
    cut from a pool at random offsets and passed through one of N_TABLES letter
    permutations, so that files are alike in kind but not copies of each other."""

    def __init__(self, seed: int):
        rnd = random.Random(seed * 7 + 2)
        letters = string.ascii_lowercase
        vocab = ["".join(rnd.choices(letters, k=rnd.randint(2, 10))) for _ in range(4000)]
        users = vocab[:200]
        parts = []
        size = 0
        t = 1_700_000_000
        while size < POOL_BYTES:
            t += rnd.randint(1, 600)
            line = (f'{{"id": {rnd.randint(1, 10**9)}, "chat": {rnd.randint(1, 300)}, '
                    f'"user": "{rnd.choice(users)}", "ts": {t}, '
                    f'"text": "{" ".join(rnd.choices(vocab, k=rnd.randint(2, 24)))}"}}\n')
            parts.append(line)
            size += len(line)
        self.pool = "".join(parts).encode()
        lb = letters.encode()
        self.tables = [bytes.maketrans(lb, bytes(rnd.sample(lb, len(lb)))) for _ in range(N_TABLES)]

    def make(self, rnd: random.Random, header: bytes, size: int) -> bytes:
        """size bytes of text starting with header (cut short if size is smaller)."""
        body = size - len(header)
        if body <= 0:
            return header[:size]
        off = rnd.randrange(0, len(self.pool) - body)
        return header + self.pool[off:off + body].translate(rnd.choice(self.tables))


def file_content(rnd: random.Random, text: TextSource, i: int, rel: str, size: int,
                 kind: str) -> bytes:
    """The generated content of file i."""
    if kind == "random":
        return rnd.randbytes(size)
    return text.make(rnd, f'{{"file": "{rel}", "n": {i}}}\n'.encode(), size)


def _read_marker(path: Path):
    """A tree's marker (tree.json), or None if absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_marker(path: Path, marker: dict) -> None:
    """Replace a tree's marker atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(marker, indent=1))
    tmp.replace(path)


def ensure_tree(trees: Path, n: int, seed: int) -> dict:
    """The tree for (n, seed) under trees/, generated unless a finished, unmodified one
    is already there (its marker says so and its file count and bytes still match).
    -> the marker: {"data": path, "files", "bytes", "dirs", "text_files", ...}."""
    base = trees / f"n{n}-seed{seed}"
    data = base / "data"
    marker_path = base / "tree.json"
    m = _read_marker(marker_path)
    if (m and m.get("version") == GEN_VERSION and m.get("n") == n and m.get("seed") == seed
            and m.get("state") == "clean" and data.is_dir()):
        files, size = bb.tree_stats(data)
        if (files, size) == (m["files"], m["bytes"]):
            log(f"[{fmt_count(n)} files] reusing the tree in {data} "
                f"({files:,} files, {fmt_bytes(size)})")
            m["reused"] = True
            return m
        log(f"[{fmt_count(n)} files] kept tree does not match its marker "
            f"({files} files, {size} bytes); generating it again")
    bb.rmtree(base)
    data.mkdir(parents=True)
    log(f"[{fmt_count(n)} files] generating {n:,} files (seed {seed}) in {data}")
    t0 = time.monotonic()
    text = TextSource(seed)
    rnd = random.Random(seed * 7 + 3)
    made_dirs = set()
    total = text_files = empty = 0
    last = t0
    for i, rel, size, kind in plan_tree(n, seed):
        d = rel.rpartition("/")[0]
        if d not in made_dirs:
            os.makedirs(data / d, exist_ok=True)
            made_dirs.add(d)
        with open(data / rel, "wb") as f:
            f.write(file_content(rnd, text, i, rel, size, kind))
        total += size
        text_files += kind == "text"
        empty += size == 0
        now = time.monotonic()
        if now - last >= 10:
            last = now
            log(f"    {i + 1:,}/{n:,} files ({100 * (i + 1) / n:.0f}%), {fmt_bytes(total)}, "
                f"{now - t0:.0f} s")
    dirs = set()
    for d in made_dirs:
        parts = d.split("/")
        dirs.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))
    m = {"version": GEN_VERSION, "n": n, "seed": seed, "state": "clean", "data": str(data),
         "files": n, "bytes": total, "dirs": len(dirs), "text_files": text_files,
         "empty_files": empty, "generate_seconds": round(time.monotonic() - t0, 1),
         "shape": {"size_median": 3000, "size_sigma": SIZE_SIGMA, "size_max": SIZE_MAX,
                   "text_fraction": TEXT_FRACTION, "empty_fraction": EMPTY_FRACTION}}
    _write_marker(marker_path, m)
    log(f"[{fmt_count(n)} files] generated {n:,} files, {fmt_bytes(total)}, {len(dirs)} dirs "
        f"in {m['generate_seconds']} s")
    m["reused"] = False
    return m


def change_files(tree: dict, seed: int, undo: list) -> dict:
    """Change 1% of the tree's files, chosen and written deterministically: even picks are
    rewritten with new content of the same size, odd picks get 100-1000 bytes appended;
    every mtime moves forward by at least a second. What revert_files() needs to put the
    originals back is appended to undo as it goes (so a failure half-way is undone too);
    the marker says 'modified' until then. -> summary."""
    n = tree["n"]
    data = Path(tree["data"])
    rnd = random.Random(seed * 7 + 4)
    picks = set(rnd.sample(range(n), max(1, round(n * CHANGE_FRACTION))))
    text = TextSource(seed)
    marker_path = data.parent / "tree.json"
    _write_marker(marker_path, dict(tree, state="modified"))
    rewritten = appended = added_bytes = 0
    for i, rel, size, kind in plan_tree(n, seed):
        if i not in picks:
            continue
        p = data / rel
        st = os.stat(p)
        with open(p, "rb") as f:
            original = f.read()
        undo.append((p, original, st.st_atime_ns, st.st_mtime_ns))
        if i % 2 == 0:
            new = file_content(rnd, text, i, rel + "~", size, kind)
            rewritten += 1
        else:
            extra = rnd.randint(100, 1000)
            tail = (rnd.randbytes(extra) if kind == "random" else
                    text.make(rnd, b"\n", extra))
            new = original + tail
            appended += 1
            added_bytes += extra
        with open(p, "wb") as f:
            f.write(new)
        mtime = max(time.time_ns(), st.st_mtime_ns + 1_000_000_000)
        os.utime(p, ns=(st.st_atime_ns, mtime))
    return {"files_changed": len(undo), "rewritten_same_size": rewritten,
                  "appended": appended, "bytes_appended": added_bytes}


def revert_files(tree: dict, undo) -> None:
    """Put back the content and times change_files() replaced; mark the tree clean."""
    for p, original, atime, mtime in undo:
        with open(p, "wb") as f:
            f.write(original)
        os.utime(p, ns=(atime, mtime))
    _write_marker(Path(tree["data"]).parent / "tree.json",
                  {k: v for k, v in tree.items() if k != "reused"})


def make_tools(args, tools_sel, bins, rustic_bin, rdir, logdir, n, data_bytes):
    """One tool object per selected tool, each with fresh state and repository paths
    under rdir (rdir/state/<tool>, rdir/repos/<tool>)."""
    tools = []
    for name in tools_sel:
        if name == "rustic" and rustic_bin is None:
            continue
        state = rdir / "state" / name
        repo = rdir / "repos" / name
        state.mkdir(parents=True)
        repo.parent.mkdir(parents=True, exist_ok=True)
        a = (state, repo, logdir, data_bytes / 1e9)
        t = {"backlock": lambda: bb.Backlock(bins.get("backlock-cli"), *a),
             "backlock-s3": lambda: bb.BacklockS3(bins.get("backlock-cli"), args.s3, *a),
             "restic": lambda: bb.Restic(*a),
             "rustic": lambda: Rustic(rustic_bin, *a)}[name]()
        t.timeout = t_files_tool(n, data_bytes)
        tools.append(t)
    return tools


# --------------------------------------------------------------------------- one repetition

def run_files_rep(args, tree: dict, rep: int, bins, rustic_bin, cache, tools_sel, res) -> dict:
    """Fresh repositories, the four phases for every tool; the tree is reverted at the end."""
    n = tree["n"]
    data = Path(tree["data"])
    tag = f"n-{fmt_count(n)}"
    rdir = args.workdir / "runs" / tag / f"rep{rep}"
    bb.rmtree(rdir)
    rlog = args.workdir / "logs" / tag / f"rep{rep}"
    tools = make_tools(args, tools_sel, bins, rustic_bin, rdir, rlog, n, tree["bytes"])
    out = {"rep": rep, "tools": {t.name: {"ok": True} for t in tools}}

    def fail(t, phase, msg):
        out["tools"][t.name]["ok"] = False
        out["tools"][t.name].setdefault("errors", []).append(f"{phase}: {msg}")
        res["errors"].append(f"rep {rep} {t.name} {phase}: {msg}")
        log(f"!! {t.name} {phase} FAILED: {msg}")

    for t in tools:
        try:
            j = t.init()
            if j:
                out["tools"][t.name]["init"] = {k: v for k, v in j.items() if k != "key"}
        except BenchError as e:
            fail(t, "init", str(e))

    expected = None

    def timed_phase(phase):
        fp = bb.fingerprint(data)  # what every tool must leave as it is
        for t in tools:
            st = out["tools"][t.name]
            if not st["ok"]:
                continue
            mode = cache.drop([data.parent, rdir])
            if phase == "restore":
                target = rdir / "restore" / t.name
                target.parent.mkdir(parents=True, exist_ok=True)
                cmd, cwd = t.restore_cmd(target, phase)
            elif phase == "check":
                cmd, cwd = t.check_cmd(), None
            else:
                cmd, cwd = t.backup_cmd(data, phase), None
            log(f"[{fmt_count(n)} files rep {rep}] {phase:<9} {t.name}")
            r = run(cmd, logdir=rlog, name=f"{t.name}-{phase}", timeout=t.timeout,
                    env=t.env(), cwd=cwd, timed=True)
            m = {"seconds": round(r.seconds, 3), "rss_kib": r.rss_kib, "rc": r.rc, "cache": mode,
                 "ok": not r.timed_out and t.ok_rc(r.rc)}
            st[phase] = m
            if t.name.startswith("backlock"):
                report = bb.last_json(r.stdout)
                if report is not None:
                    m["tool_report"] = report
                    if isinstance(report.get("requests"), dict):
                        m["requests"] = report["requests"]
            changed = bb.source_changes(fp, bb.fingerprint(data))
            if changed:
                for k in [k for k, v in changed.items() if v == "added"]:
                    (data / k).unlink()
                m["modified_source"] = dict(list(changed.items())[:20])
                res["errors"].append(f"rep {rep} {t.name} {phase}: wrote into the tree being "
                                     f"backed up ({len(changed)} paths, e.g. "
                                     f"{list(changed.items())[:3]}); added files deleted")
                log(f"!! {res['errors'][-1]}")
            if not m["ok"]:
                fail(t, phase, f"rc={r.rc}{' TIMEOUT' if r.timed_out else ''}; cmd: "
                     f"{shlex.join(map(str, cmd))}; stderr tail: {r.stderr_tail[-800:].strip()}")
                continue
            if phase == "restore":
                # Durable like backlock's (one syncfs before its final rename): the
                # peers' restores end with their data still in the page cache.
                t0 = time.monotonic()
                subprocess.run(["sync", "-f", str(target)], timeout=600, check=False)
                m["sync_seconds"] = round(time.monotonic() - t0, 3)
                t0 = time.monotonic()
                v = bb.verify(expected, target, data)
                m["verify"] = {k: v[k] for k in ("ok", "root", "files", "summary", "missing",
                                                 "extra", "differ")}
                m["verify"]["seconds"] = round(time.monotonic() - t0, 1)
                m["verified"] = v["ok"]
                if v["ok"]:
                    t0 = time.monotonic()
                    bb.rmtree(target)
                    m["verify"]["rmtree_seconds"] = round(time.monotonic() - t0, 1)
                else:
                    fail(t, "verify", f"restore differs from the tree: {v['summary']} "
                         f"(e.g. {(v['missing'] + v['differ'] + v['extra'])[:3]})"
                         + (f"; kept at {target}" if args.keep else "; --keep to inspect"))
            elif phase == "changed":
                st["repo_bytes"] = t.repo_bytes() if t.name != "backlock-s3" else None
            log(f"    {r.seconds:8.2f} s  RSS {((r.rss_kib or 0) / 1024):.1f} MiB  rc={r.rc}"
                + (f"  GET {gets(m['requests'])}" if m.get("requests") else "")
                + (f"  (verified in {m['verify']['seconds']} s: {m['verify']['summary']})"
                   if m.get("verify") else ""))

    undo = []
    try:
        timed_phase("initial")
        timed_phase("unchanged")
        out["change"] = change_files(tree, args.seed, undo)
        log(f"[{fmt_count(n)} files rep {rep}] changed: {out['change']}")
        timed_phase("changed")
        t0 = time.monotonic()
        expected = bb.hash_tree(data)
        out["expected_hash_seconds"] = round(time.monotonic() - t0, 1)
        timed_phase("restore")
        timed_phase("check")
    finally:
        revert_files(tree, undo)
    for t in tools:
        if t.state.exists():
            out["tools"][t.name]["state_bytes"] = bb.du_sb(t.state)  # caches, device state
    if not args.keep:
        bb.rmtree(rdir)
    return out


# --------------------------------------------------------------------------- summary / table

def gets(requests: dict):
    """GET requests (whole and ranged) in a backlock `requests` object."""
    return (requests.get("get") or 0) + (requests.get("get_range") or 0)


def summarize_files(nres: dict, tools_sel) -> dict:
    """Medians over repetitions per tool and phase, and the target ratios."""
    reps = nres["reps"]
    T = {}
    for name in tools_sel:
        tr = {}
        for ph, _ in PHASES:
            all_ms = [r["tools"][name][ph] for r in reps if ph in r["tools"].get(name, {})]
            ms = [m for m in all_ms if m["ok"]]
            reqs = [m["requests"] for m in ms if m.get("requests")]
            tr[ph] = {"seconds": median([m["seconds"] for m in ms]),
                      "rss_mib": median([m["rss_kib"] / 1024 for m in ms if m.get("rss_kib")]),
                      "n": len(ms), "n_failed": len(all_ms) - len(ms),
                      "all_ok": bool(reps) and len(ms) == len(reps),
                      "requests": ({k: median([q.get(k) for q in reqs]) for k in reqs[0]}
                                   if reqs else None)}
            if ph == "restore":
                vs = [m["verify"] for m in all_ms if m.get("verify")]
                tr[ph]["verified"] = all(v["ok"] for v in vs) if vs else None
                tr[ph]["verify_summary"] = "; ".join(sorted({v["summary"] for v in vs}))
                tr[ph]["verified_files"] = median([v["files"] for v in vs if "files" in v])
                tr[ph]["durable_seconds"] = median([m["seconds"] + m.get("sync_seconds", 0)
                                                    for m in ms])
        tr["repo_bytes"] = median([r["tools"].get(name, {}).get("repo_bytes") for r in reps])
        T[name] = tr

    def sec(name, ph):
        """Seconds of a phase; a restore's until its data is durable."""
        t = T.get(name)
        if not (t and t[ph]["all_ok"]):
            return None
        return t[ph]["durable_seconds"] if ph == "restore" else t[ph]["seconds"]

    speedup, rss = {}, {}
    for ph, _ in PHASES:
        bl = sec("backlock", ph)
        peers = sorted((sec(p, ph), p) for p in PEERS if sec(p, ph) is not None)
        if bl and peers:
            best, who = peers[0]
            ok = best / bl >= SPEEDUP_TARGET
            if ph == "restore" and T["backlock"][ph].get("verified") is False:
                ok = False
            speedup[ph] = {"speedup": best / bl, "vs": who, "pass": ok}
        r = (T.get("backlock") or {}).get(ph, {}).get("rss_mib")
        rss[ph] = {"rss_mib": r, "pass": r <= RSS_TARGET_MIB} if r is not None else None
    peak = [x["rss_mib"] for x in rss.values() if x]
    return {"tools": T, "speedup": speedup, "rss_vs_target": rss,
            "backlock_peak_rss_mib": max(peak) if peak else None}


def _pf(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"


def render_files(nres: dict, s: dict, tools_sel, rustic_note, cache_desc: str) -> str:
    """The table for one N, then the request counts and the target lines."""
    tree = nres["tree"]
    T = s["tools"]
    L = ["", f"=== {tree['files']:,} files, {fmt_bytes(tree['bytes'])} in {tree['dirs']:,} dirs "
             f"(seed {tree['seed']}; {tree['text_files']:,} text-like, "
             f"{tree['files'] - tree['text_files']:,} random, {tree['empty_files']:,} empty); "
             f"{len(nres['reps'])} repetition(s), medians shown ===",
         f"cache: {cache_desc}"]
    change = nres["reps"][0].get("change") if nres["reps"] else None
    if change:
        L.append(f"changed 1%: {change['files_changed']:,} files ({change['rewritten_same_size']:,} "
                 f"rewritten at the same size, {change['appended']:,} appended to, "
                 f"+{fmt_bytes(change['bytes_appended'])}), mtimes moved forward")
    cw = 22
    L.append(f"{'':<19}|" + "|".join(f"{n:^{cw}}" for n in tools_sel))
    sub = f"{'phase':<19}|" + "|".join(f"{'s':>10}{'RSS MiB':>11} " for _ in tools_sel)
    L.append(sub)
    L.append("-" * len(sub))

    def cell(name, ph):
        if name == "rustic" and rustic_note:
            return f"{'n/a':^{cw}}"
        t = T[name][ph]
        if t["n_failed"]:
            return f"{'!! FAILED ' + str(t['n_failed']) + 'x !!':^{cw}}"
        if t["n"] == 0:
            return f"{'not run':^{cw}}"
        bad = " !!" if ph == "restore" and t.get("verified") is False else "   "
        return f"{fnum(t['seconds']):>10}{fnum(t['rss_mib'], 1):>9}{bad}"

    for ph, label in PHASES:
        L.append(f"{label:<19}|" + "|".join(cell(n, ph) for n in tools_sel))
        if ph != "restore":
            continue
        L.append(f"{'restore + sync':<19}|" + "|".join(
            f"{fnum(T[n]['restore'].get('durable_seconds')):>10}{'':>12}"
            if T[n]["restore"]["n"] and not (n == "rustic" and rustic_note) else f"{'':^{cw}}"
            for n in tools_sel))
    L.append("-" * len(sub))
    row = []
    for name in tools_sel:
        r = T[name]["restore"]
        if name == "rustic" and rustic_note:
            txt = "n/a"
        elif r.get("verified") is None:
            txt = "not run"
        elif r["verified"]:
            txt = f"OK ({int(r['verified_files']):,} files)"
        else:
            txt = "!!! MISMATCH !!!"
        row.append(f"{txt:^{cw}}")
    L.append(f"{'restore verified':<19}|" + "|".join(row))
    L.append(f"{'repo size':<19}|" + "|".join(
        f"{('—' if n == 'backlock-s3' or T[n]['repo_bytes'] is None else fmt_bytes(T[n]['repo_bytes'])):^{cw}}"
        for n in tools_sel))
    L.append("restore + sync: the restore until its data is durable (`sync -f` of the target's "
             "file system after the tool ends; backlock's restore syncs before it ends); the "
             "restore ratio below compares these")
    L.append("restore check: every restored file's sha256 and size against the tree "
             "(and no file missing or extra)")
    if rustic_note and "rustic" in tools_sel:
        L.append(f"rustic: n/a ({rustic_note})")
    for name in tools_sel:
        r = T[name]["restore"]
        if r.get("verified") is False:
            L.append(f"!!! {name} restore is NOT identical to the tree: {r['verify_summary']}")
    for e in nres["errors"]:
        L.append(f"!!! ERROR {e[:600]}")

    for name in ("backlock", "backlock-s3"):
        if name not in tools_sel:
            continue
        parts = []
        for ph, _ in PHASES:
            q = T[name][ph]["requests"]
            if q:
                detail = ", ".join(f"{k} {v:g}" for k, v in q.items() if isinstance(v, (int, float)))
                parts.append(f"{ph} GET {gets(q):g} ({detail})")
        where = ("on S3; after the initial backup the local cache is warm" if name == "backlock-s3"
                 else "on local disk")
        if parts:
            L.append(f"{name} store requests, GET = get + get_range ({where}): " + "; ".join(parts))
        else:
            L.append(f"{name} store requests: not reported (no `requests` in its --json summary)")

    L.append("")
    parts = []
    for ph, _ in PHASES:
        x = s["speedup"].get(ph)
        parts.append(f"{ph} n/a" if x is None else
                     f"{ph} {x['speedup']:.2f}× (vs {x['vs']}) {_pf(x['pass'])}")
    L.append(f"backlock N× faster than the faster of restic/rustic (target ≥ {SPEEDUP_TARGET:g}×): "
             + ", ".join(parts))
    parts = []
    for ph, _ in PHASES:
        x = s["rss_vs_target"].get(ph)
        parts.append(f"{ph} n/a" if x is None else
                     f"{ph} {x['rss_mib']:.1f} MiB {_pf(x['pass'])}")
    L.append(f"backlock peak RSS (target ≤ {RSS_TARGET_MIB:g} MiB in every phase): " + ", ".join(parts))
    return "\n".join(L)


def render_rss_growth(summaries, tools_sel) -> tuple:
    """backlock's peak RSS at the largest N over the smallest, per phase and overall
    (target ≤ RSS_GROWTH_TARGET), then every tool's for information. -> (text, json)."""
    (n0, s0), (n1, s1) = summaries[0], summaries[-1]
    out = {"from_files": n0, "to_files": n1, "phases": {}}
    parts = []
    for ph, _ in PHASES:
        a = s0["tools"].get("backlock", {}).get(ph, {}).get("rss_mib")
        b = s1["tools"].get("backlock", {}).get(ph, {}).get("rss_mib")
        if a and b:
            out["phases"][ph] = b / a
            parts.append(f"{ph} {a:.1f} -> {b:.1f} MiB = {b / a:.2f}× {_pf(b / a <= RSS_GROWTH_TARGET)}")
        else:
            parts.append(f"{ph} n/a")
    a, b = s0.get("backlock_peak_rss_mib"), s1.get("backlock_peak_rss_mib")
    L = [f"backlock peak RSS at {n1:,} files / at {n0:,} files "
         f"(target ≤ {RSS_GROWTH_TARGET:g}×): " + ", ".join(parts)]
    if a and b:
        out["peak_ratio"] = b / a
        out["pass"] = b / a <= RSS_GROWTH_TARGET
        L.append(f"backlock peak over all phases: {a:.1f} -> {b:.1f} MiB = {b / a:.2f}× "
                 f"{_pf(out['pass'])}")
    L.append(f"every tool's peak RSS per phase from {n0:,} to {n1:,} files (MiB, info):")
    for name in tools_sel:
        cells = []
        for ph, label in PHASES:
            a = s0["tools"].get(name, {}).get(ph, {}).get("rss_mib")
            b = s1["tools"].get(name, {}).get(ph, {}).get("rss_mib")
            if a and b:
                cells.append(f"{ph} {a:.1f} -> {b:.1f} ({b / a:.2f}×)")
        if cells:
            L.append(f"  {name:<11} " + "; ".join(cells))
    return "\n".join(L), out


# --------------------------------------------------------------------------- main

def prepare_workdir(ap, args, tools_sel) -> None:
    """A files-mode workdir is reused (its generated trees are kept); anything else
    must be empty or absent. Old runs, logs and results of a previous run go."""
    if args.workdir is None:
        args.workdir = DEFAULT_WORKDIR
    args.workdir = args.workdir.resolve()
    marker = args.workdir / WORKDIR_MARKER
    if args.workdir.exists() and any(args.workdir.iterdir()) and not marker.exists():
        ap.error(f"--workdir {args.workdir} exists, is not empty and is not a --files workdir")
    args.workdir.mkdir(parents=True, exist_ok=True)
    marker.write_text("workdir of scripts/bench-backup --files; trees/ is reused\n")
    for old in ("runs", "logs", "results.json", "seaweedfs"):
        bb.rmtree(args.workdir / old)
    trees = args.workdir / "trees"
    kept = 0
    for n in args.files:
        m = _read_marker(trees / f"n{n}-seed{args.seed}" / "tree.json")
        kept += m["bytes"] if m and m.get("state") == "clean" else 0
    # Trees stay; one N's repositories (about the data per tool) and one restore at a time.
    need = sum(args.files) * EST_FILE_BYTES - kept + max(args.files) * EST_FILE_BYTES * (len(tools_sel) + 1)
    if args.keep:
        need += sum(args.files) * EST_FILE_BYTES * len(tools_sel) * args.repeat
    free = shutil.disk_usage(args.workdir).free
    if free < need * 0.75:
        ap.error(f"{args.workdir}: {fmt_bytes(free)} free, need about {fmt_bytes(need)}")
    elif free < need:
        log(f"warning: {fmt_bytes(free)} free in {args.workdir}, about {fmt_bytes(need)} advised")


def main_files(ap, args) -> int:
    """`--files N[,N...]`: the many-small-files benchmark. -> exit status."""
    tools_sel = [t.strip() for t in (args.tools or ",".join(FILES_DEFAULT_TOOLS)).split(",")
                 if t.strip()]
    bad = [t for t in tools_sel if t not in FILES_TOOLS]
    if bad or not tools_sel:
        ap.error(f"--files: unknown tools {bad}; choose from {','.join(FILES_TOOLS)}")
    tools_sel = [t for t in FILES_TOOLS if t in tools_sel]
    if args.stand_in_data:
        ap.error("--stand-in-data is for the chat data set, not --files")
    prepare_workdir(ap, args, tools_sel)
    args.repo_root = args.repo_root.resolve()
    logdir = args.workdir / "logs"
    results = {"mode": "files", "started": _dt.datetime.now().isoformat(timespec="seconds"),
               "args": {"files": args.files, "seed": args.seed, "repeat": args.repeat,
                        "tools": tools_sel, "workdir": str(args.workdir)},
               "env": bb.env_info(), "files": []}
    rc = 0
    cache = bb.CacheControl()
    args.s3 = None
    try:
        bb.ensure_peers(logdir, results["env"])  # restic and /usr/bin/time
        rustic_bin, rustic_note = None, None
        if "rustic" in tools_sel:
            rustic_bin, version = ensure_rustic(args.repo_root, logdir)
            results["env"]["versions"]["rustic"] = version
            if rustic_bin is None:
                rustic_note = version
        bins = {}
        if "backlock" in tools_sel or "backlock-s3" in tools_sel:
            bins = bb.build(args.repo_root, ["backlock-cli"], logdir, args.skip_build)
        if "backlock-s3" in tools_sel:
            args.s3 = bb.SeaweedS3(args.workdir, args.repo_root, logdir)
        v = results["env"]["versions"]
        for p, b in bins.items():
            v[p] = f"{bb.capture([b, '--version'])} ({b})"
        print("versions:", file=sys.stderr)
        for k in ("backlock-cli", "restic", "rustic", "time"):
            if k in v:
                print(f"  {k:<13} {v[k]}", file=sys.stderr)

        summaries = []
        for n in args.files:
            nres = {"n": n, "reps": [], "errors": []}
            results["files"].append(nres)
            try:
                tree = ensure_tree(args.workdir / "trees", n, args.seed)
                nres["tree"] = tree
                for rep in range(1, args.repeat + 1):
                    nres["reps"].append(run_files_rep(args, tree, rep, bins, rustic_bin, cache,
                                                      tools_sel, nres))
            except BenchError as e:
                log(f"!! {n:,} files aborted: {e}")
                nres["aborted"] = str(e)
                rc = 1
                continue
            s = summarize_files(nres, tools_sel)
            nres["summary"] = s
            summaries.append((n, s))
            print(render_files(nres, s, tools_sel, rustic_note, cache.describe()), flush=True)
            if nres["errors"]:
                rc = 1
            bb.write_results(args.workdir, results, cache)
        if len(summaries) > 1:
            text, growth = render_rss_growth(summaries, tools_sel)
            print("\n" + text)
            results["rss_growth"] = growth
    except BenchError as e:
        log(f"!! aborted: {e}")
        results["aborted"] = str(e)
        rc = 1
    except KeyboardInterrupt:
        log("interrupted")
        results["aborted"] = "interrupted"
        rc = 130
    finally:
        if args.s3:
            args.s3.stop()
        results["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
        path = bb.write_results(args.workdir, results, cache)
        if not args.keep:
            for p in ("runs", "seaweedfs"):  # a venv made for weed stays, like trees/
                try:
                    bb.rmtree(args.workdir / p)
                except OSError as e:
                    log(f"cleanup of {p} failed: {e}")
        print(f"\nresults: {path}" + ("" if args.keep else
                                      "  (repos removed, --keep to keep; generated trees kept "
                                      f"in {args.workdir / 'trees'} for the next run)"))
        if rc == 1:
            print("!!! errors occurred (see above / results.json); exit status 1")
    return rc
