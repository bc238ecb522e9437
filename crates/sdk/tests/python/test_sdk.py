"""The Python package `backlock`, as an app uses it (docs/SDK.md).

Run by crates/sdk/tests/python.rs (scripts/test), which installs the wheel into a
fresh venv and gives the S3 server's URL and credentials in the environment.
"""

import hashlib
import os
import threading

import pytest

import backlock


def tree_digest(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def chat(tmp_path):
    """A small chat folder: text, and media that does not compress."""
    root = tmp_path / "chat"
    (root / "Media").mkdir(parents=True)
    (root / "notes.txt").write_text("hello from the phone\n" * 200)
    for i in range(4):
        (root / "Media" / f"IMG-{i}.jpg").write_bytes(os.urandom(3 << 20))
    return root


def test_the_package_is_the_installed_wheel():
    assert "site-packages" in backlock.__file__, backlock.__file__


def test_key_only_round_trip_on_a_new_phone(tmp_path, chat):
    dev = backlock.Device(home=tmp_path / "home")
    repo = dev.create_repository(tmp_path / "repo")
    key = repo.enable_key_only()
    groups = key.split(" ")
    assert len(groups) == 16 and all(len(g) == 4 for g in groups)
    seen = []
    summary = repo.backup([chat], progress=lambda p: seen.append(p.bytes_done))
    assert summary.files > 0 and summary.bytes_new > 0
    assert seen, "progress was reported"
    snaps = repo.snapshots()
    assert [s.seq for s in snaps] == [1]
    phone2 = backlock.Device(home=tmp_path / "home2")
    repo2 = phone2.open_repository(tmp_path / "repo", key=key)
    done = repo2.restore(snaps[-1].id, target=tmp_path / "restored")
    assert done.files == summary.files
    assert tree_digest(tmp_path / "restored" / "chat") == tree_digest(chat)
    # A part of it.
    repo2.restore("latest", target=tmp_path / "part", path="chat/notes.txt")
    assert (tmp_path / "part" / "notes.txt").read_text() == (chat / "notes.txt").read_text()


def test_progress_arrives_in_order(tmp_path, chat):
    repo = backlock.Device(home=tmp_path / "home").create_repository(tmp_path / "repo")
    repo.enable_key_only()
    reports = []
    lock = threading.Lock()

    def on(p):
        with lock:
            reports.append((p.bytes_done, p.files_done, p.bytes_total))

    repo.backup([chat], progress=on)
    done = [r[0] for r in reports]
    assert done == sorted(done), "bytes_done never goes back"
    assert [r[1] for r in reports] == sorted(r[1] for r in reports)
    assert reports[-1][0] == reports[-1][2], "the last report is the whole"


def test_a_wrong_key_is_WrongKey_and_names_no_key(tmp_path, chat):
    repo = backlock.Device(home=tmp_path / "home").create_repository(tmp_path / "repo")
    key = repo.enable_key_only()
    repo.backup([chat])
    wrong = "0123" * 16
    with pytest.raises(backlock.WrongKey) as e:
        backlock.Device(home=tmp_path / "h2").open_repository(tmp_path / "repo", key=wrong)
    assert isinstance(e.value, backlock.Error)
    text = str(e.value)
    assert wrong not in text and key.replace(" ", "") not in text
    with pytest.raises(backlock.WrongKey):
        backlock.Device(home=tmp_path / "h3").open_repository(tmp_path / "repo", key="12 34")


def test_cancelled_in_the_middle_the_next_backup_completes(tmp_path, chat):
    dev = backlock.Device(home=tmp_path / "home")
    repo = dev.create_repository(tmp_path / "repo")
    repo.enable_key_only()
    first = repo.backup([chat])
    for i in range(6):
        (chat / "Media" / f"VID-{i}.mp4").write_bytes(os.urandom(4 << 20))
    token = backlock.CancelToken()
    reports = []

    def on(p):
        reports.append(p.bytes_done)
        token.cancel()

    with pytest.raises(backlock.Cancelled):
        repo.backup([chat], progress=on, cancel=token)
    assert token.is_cancelled()
    assert reports and reports[-1] < sum(f.stat().st_size for f in chat.rglob("*") if f.is_file())
    assert [s.id for s in repo.snapshots()] == [first.snapshot], "no snapshot from the cancelled run"
    second = repo.backup([chat])
    assert second.seq == 2
    repo.restore(first.snapshot, target=tmp_path / "old")
    assert not any(p.name.startswith("VID-") for p in (tmp_path / "old").rglob("*"))
    repo.restore("latest", target=tmp_path / "new")
    assert tree_digest(tmp_path / "new" / "chat") == tree_digest(chat)


def test_an_exception_in_the_callback_stops_the_backup_and_nothing_panics(tmp_path, chat):
    repo = backlock.Device(home=tmp_path / "home").create_repository(tmp_path / "repo")
    repo.enable_key_only()

    def boom(p):
        raise ValueError("the app's bug")

    with pytest.raises(backlock.Callback) as e:
        repo.backup([chat], progress=boom)
    assert "ValueError: the app's bug" in str(e.value)
    assert repo.snapshots() == []
    assert repo.backup([chat]).seq == 1, "the repository is usable after it"


def test_bad_requests_are_Invalid(tmp_path, chat):
    dev = backlock.Device(home=tmp_path / "home")
    repo = dev.create_repository(tmp_path / "repo")
    with pytest.raises(backlock.Invalid):
        repo.backup([chat])  # no key yet
    repo.enable_key_only()
    with pytest.raises(backlock.Invalid):
        dev.create_repository(tmp_path / "repo")  # already there
    with pytest.raises(backlock.Invalid):
        repo.backup([])
    repo.backup([chat])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("mine")
    with pytest.raises(backlock.Invalid):
        repo.restore("latest", target=tmp_path / "busy")
    assert (tmp_path / "busy" / "x").read_text() == "mine"
    with pytest.raises(TypeError):
        repo.backup([chat], progress=42)


def test_one_thread_for_a_phone_in_the_background(tmp_path, chat):
    dev = backlock.Device(home=tmp_path / "home")
    dev.set_threads(1)
    try:
        repo = dev.create_repository(tmp_path / "repo")
        repo.enable_key_only()
        assert repo.backup([chat]).files > 0
        assert repo.check(read_data=True).errors == []
    finally:
        dev.set_threads(0)


@pytest.mark.skipif("BACKLOCK_TEST_S3_URL" not in os.environ, reason="no S3 server given")
def test_a_store_url(tmp_path, chat):
    url = os.environ["BACKLOCK_TEST_S3_URL"]
    repo = backlock.Device(home=tmp_path / "home").create_repository(url)
    key = repo.enable_key_only()
    repo.backup([chat])
    other = backlock.Device(home=tmp_path / "home2").open_repository(url, key=key)
    other.restore("latest", target=tmp_path / "restored")
    assert tree_digest(tmp_path / "restored" / "chat") == tree_digest(chat)


def served_vault():
    """The vault crates/sdk/tests/python.rs serves on loopback, for account alice."""
    if "BACKLOCK_TEST_VAULT_URL" not in os.environ:
        pytest.skip("no vault given")
    return backlock.VaultConfig(
        urls=[os.environ["BACKLOCK_TEST_VAULT_URL"]],
        public_key=os.environ["BACKLOCK_TEST_VAULT_KEY"],
        account="alice",
        token=os.environ["BACKLOCK_TEST_VAULT_TOKEN"],
    )


def test_the_relay_token_never_prints():
    secret = "tok-SECRET-1234"
    cfg = backlock.VaultConfig(urls=["https://v1:7070"], public_key="00" * 32,
                               account="alice", token=secret)
    assert isinstance(cfg.token, backlock.AccountToken)
    given = backlock.VaultConfig(account="alice", token=backlock.AccountToken(secret))
    shown = [str(cfg), repr(cfg), str(cfg.token), repr(cfg.token), f"{cfg}", f"{cfg!r}",
             f"{cfg.token}", f"{cfg.token!r}", "%s %r" % (cfg, cfg), format(cfg),
             str(given), repr(given), str([cfg]), str({"vault": cfg})]
    for text in shown:
        assert "SECRET" not in text, text
    assert str(cfg.token) == repr(cfg.token) == "AccountToken(REDACTED)"
    for bad in ["", "tok SECRET", "tok-SECRET\n", "tok\x07SECRET"]:
        with pytest.raises(backlock.Invalid) as e:
            backlock.VaultConfig(account="alice", token=bad)
        assert "SECRET" not in str(e.value) and "SECRET" not in repr(e.value)


def test_password_mode_through_a_served_vault(tmp_path, chat):
    vault_cfg = served_vault()
    dev = backlock.Device(home=tmp_path / "home")
    repo_p = dev.create_repository(tmp_path / "repo")
    repo_p.enable_password("correct horse", vault=vault_cfg)
    repo_p.backup([chat])
    # This device keeps the key: it opens without one.
    assert dev.open_repository(tmp_path / "repo").snapshots()[0].seq == 1
    phone3 = backlock.Device(home=tmp_path / "phone3")
    with pytest.raises(backlock.WrongPassword) as e:
        phone3.recover_key(vault=vault_cfg, password="wrong")
    assert e.value.attempts_left == 9
    assert "wrong" not in str(e.value).replace("wrong password", "")
    key3 = phone3.recover_key(vault=vault_cfg, password="correct horse")
    phone3.open_repository(tmp_path / "repo", key=key3).restore("latest", target=tmp_path / "restore3")
    assert tree_digest(tmp_path / "restore3" / "chat") == tree_digest(chat)
    # A new password; the old one opens nothing any more.
    repo_p.change_password("battery staple", vault=vault_cfg)
    with pytest.raises(backlock.WrongPassword):
        phone3.recover_key(vault=vault_cfg, password="correct horse")
    assert phone3.recover_key(vault=vault_cfg, password="battery staple") == key3
    # Another vault key than the operator's: nothing is sent.
    forged = backlock.VaultConfig(urls=vault_cfg.urls, public_key="00" * 32,
                                  account="alice", token=vault_cfg.token)
    with pytest.raises(backlock.WrongVault):
        phone3.recover_key(vault=forged, password="battery staple")
    # The owner deletes the record: the password opens nothing.
    repo_p.delete_vault_record(vault=vault_cfg)
    with pytest.raises(backlock.NoKey):
        phone3.recover_key(vault=vault_cfg, password="battery staple")


def test_a_new_phone_refuses_a_store_rolled_back_behind_the_vaults_anchor(tmp_path, chat):
    import shutil
    vault_cfg = served_vault()
    repo = backlock.Device(home=tmp_path / "home").create_repository(tmp_path / "repo")
    repo.enable_password("correct horse", vault=vault_cfg)
    assert repo.backup([chat], vault=vault_cfg).warnings == []
    shutil.copytree(tmp_path / "repo", tmp_path / "older")
    (chat / "later.txt").write_text("only the newest backup has this")
    assert repo.backup([chat], vault=vault_cfg).seq == 2
    # The store serves the copy from before the last backup.
    shutil.rmtree(tmp_path / "repo")
    (tmp_path / "older").rename(tmp_path / "repo")
    phone2 = backlock.Device(home=tmp_path / "phone2")
    key = phone2.recover_key(vault=vault_cfg, password="correct horse")
    with pytest.raises(backlock.RolledBack) as e:
        phone2.open_repository(tmp_path / "repo", key=key).restore("latest", target=tmp_path / "out")
    assert "#2" in str(e.value)
    assert not (tmp_path / "out").exists()
    repo.delete_vault_record(vault=vault_cfg)  # the served vault's account, for the next test


def test_a_key_store_keeps_the_key_instead_of_a_file(tmp_path, chat):
    class AppKeyStore(backlock.KeyStore):
        def __init__(self):
            self.kept = {}

        def save_key(self, name, key):
            self.kept[name] = key

        def load_key(self, name):
            return self.kept.get(name)

    store = AppKeyStore()
    vault_cfg = backlock.VaultConfig(account="alice", embedded_data=str(tmp_path / "vault"))
    dev = backlock.Device.with_key_store(tmp_path / "home", store)
    repo = dev.create_repository(tmp_path / "repo")
    repo.enable_password("correct horse", vault=vault_cfg)
    assert len(store.kept) == 1
    key = next(iter(store.kept.values()))
    for f in (tmp_path / "home").rglob("*"):
        if f.is_file():
            assert key.encode() not in f.read_bytes(), f
    assert dev.open_repository(tmp_path / "repo").backup([chat]).seq == 1
    with pytest.raises(backlock.Invalid):
        backlock.Device(home=tmp_path / "home").open_repository(tmp_path / "repo")

    class LockedKeyStore(AppKeyStore):
        def load_key(self, name):
            raise RuntimeError("the keystore is locked")

    locked = backlock.Device.with_key_store(tmp_path / "home", LockedKeyStore())
    with pytest.raises(backlock.Callback) as e:
        locked.open_repository(tmp_path / "repo")
    assert "locked" in str(e.value)


def test_an_embedded_vault_locks_after_the_limit(tmp_path, chat):
    vault_cfg = backlock.VaultConfig(account="bob", embedded_data=str(tmp_path / "vault"))
    dev = backlock.Device(home=tmp_path / "home")
    repo = dev.create_repository(tmp_path / "repo")
    with pytest.raises(backlock.Invalid):
        repo.enable_password("short", vault=vault_cfg)  # below the policy
    repo.enable_password("correct horse", vault=vault_cfg)
    repo.backup([chat])
    thief = backlock.Device(home=tmp_path / "thief")
    left = []
    for guess in range(9):
        with pytest.raises(backlock.WrongPassword) as e:
            thief.recover_key(vault=vault_cfg, password=f"guess number {guess}")
        left.append(e.value.attempts_left)
    assert left == list(range(9, 0, -1))
    # The tenth wrong guess is the last: the key is erased.
    with pytest.raises(backlock.Locked):
        thief.recover_key(vault=vault_cfg, password="the tenth guess")
    with pytest.raises(backlock.Locked):
        thief.recover_key(vault=vault_cfg, password="correct horse")
    # The device that kept the key still backs up and restores.
    assert dev.open_repository(tmp_path / "repo").backup([chat]).seq == 2


def test_a_repository_switches_modes_and_keeps_its_key(tmp_path, chat):
    vault_cfg = backlock.VaultConfig(account="carol", embedded_data=str(tmp_path / "vault"))
    dev = backlock.Device(home=tmp_path / "home")
    repo = dev.create_repository(tmp_path / "repo")
    key = repo.enable_key_only()
    repo.backup([chat])
    repo.switch_to_password("correct horse", vault=vault_cfg)
    phone2 = backlock.Device(home=tmp_path / "phone2")
    assert phone2.recover_key(vault=vault_cfg, password="correct horse") == key
    # Back to the 64-digit key: the same key, and the password opens nothing.
    assert repo.switch_to_key_only(vault=vault_cfg) == key
    with pytest.raises(backlock.NoKey):
        phone2.recover_key(vault=vault_cfg, password="correct horse")
    phone2.open_repository(tmp_path / "repo", key=key).restore("latest", target=tmp_path / "r")
    assert tree_digest(tmp_path / "r" / "chat") == tree_digest(chat)
