"""Peer tools shared by both modes of the backup benchmark: rustic (found on PATH or in
target/bench-tools/bin, or compiled once) and its Tool.

backup_bench (the chat data set) and files_bench (--files) both use it. It imports
backup_bench for the Tool base class and helpers, so backup_bench imports it lazily,
not at its top.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import backup_bench as bb
from backup_bench import log, run

T_RUSTIC_INSTALL = 7200         # cargo install rustic-rs, one job, nice 19


# --------------------------------------------------------------------------- rustic

def ensure_rustic(repo_root: Path, logdir: Path):
    """-> (path of rustic or None, version or 'install failed: ...').

    Looks on PATH and in <repo>/target/bench-tools/bin; otherwise compiles it once
    with `cargo install --locked rustic-rs --root <repo>/target/bench-tools`, at
    nice 19 with one job (it takes long, sharing the machine with other builds)."""
    root = repo_root / "target" / "bench-tools"
    found = [Path(c) for c in (shutil.which("rustic"), root / "bin" / "rustic") if c]
    for c in found:
        if c.is_file() and os.access(c, os.X_OK):
            return c, bb.capture([c, "--version"])
    cmd = ["nice", "-n", "19", "cargo", "install", "--locked", "rustic-rs", "--root", root]
    log(f"rustic not found: compiling it now ({shlex.join(map(str, cmd))}, CARGO_BUILD_JOBS=1); "
        f"this takes a long time (up to {T_RUSTIC_INSTALL // 60} min), once: it stays in {root}")
    env = {k: v for k, v in os.environ.items() if k != "CARGO_TARGET_DIR"}  # a temp target dir
    env["CARGO_BUILD_JOBS"] = "1"
    r = run(cmd, logdir=logdir, name="cargo-install-rustic", timeout=T_RUSTIC_INSTALL, env=env)
    binary = root / "bin" / "rustic"
    if r.rc != 0 or r.timed_out or not binary.is_file():
        lines = [ln.strip() for ln in r.stderr_tail.splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith("error")] or lines[-1:]
        reason = "timed out" if r.timed_out else (errs[0] if errs else f"rc={r.rc}")
        log(f"!! rustic install failed: {reason} (log: {r.log})")
        return None, f"install failed: {reason[:160]}"
    return binary, bb.capture([binary, "--version"])


class Rustic(bb.Tool):
    """rustic (restic's format, in Rust): password file, cache dir in the workdir."""
    name = "rustic"

    def __init__(self, binary: Path, *a):
        super().__init__(*a)
        self.bin = binary
        self.password_file = self.state / "password"
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(bb.PASSWORD + "\n")

    def env(self):
        e = {k: v for k, v in super().env().items() if not k.startswith("RUSTIC_")}
        e["XDG_CONFIG_HOME"] = str(self.home / ".config")  # no profile from the real ~
        return e

    def base(self):
        """rustic and its global options: repository, password, cache, no progress bars."""
        return [self.bin, "-r", self.repo, "--password-file", self.password_file,
                "--cache-dir", self.state / "rustic-cache", "--no-progress"]

    def init(self):
        run(self.base() + ["init"], logdir=self.logdir, name="rustic-init", timeout=bb.T_SHORT,
            env=self.env(), check=True)

    def backup_cmd(self, data, label):
        return self.base() + ["backup", "--host", "bench", data]

    def restore_cmd(self, target, label):
        return self.base() + ["restore", "latest", target], None

    def check_cmd(self):
        return self.base() + ["check"]
