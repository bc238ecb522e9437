"""backlock: end-to-end encrypted backups for chat apps (docs/SDK.md).

A :class:`Device` (the app's state directory) creates or opens a
:class:`Repository` at a location (a directory or a store URL), which backs up,
lists snapshots, restores and checks. Long operations block the calling thread:
run them on a worker thread. Errors are :class:`Error` and its subclasses
(:class:`WrongKey`, :class:`WrongPassword` with ``attempts_left``,
:class:`Locked`, :class:`VaultUnavailable`, :class:`Damaged`,
:class:`RolledBack`, :class:`NoKey`, :class:`WrongVault`, :class:`Busy`, :class:`Storage`, :class:`Cancelled`,
:class:`Invalid`, :class:`Callback`, :class:`Other`); each has ``message``.
"""

import os as _os

from .backlock import (  # noqa: F401  (the generated bindings)
    AccountToken,
    BackupSummary,
    CancelToken,
    CheckReport,
    Device,
    Error,
    InternalError,
    KeyStore,
    Progress,
    ProgressListener,
    Repository,
    RestoreSummary,
    SnapshotInfo,
    VaultConfig,
)

WrongKey = Error.WrongKey
WrongPassword = Error.WrongPassword
Locked = Error.Locked
VaultUnavailable = Error.VaultUnavailable
Damaged = Error.Damaged
RolledBack = Error.RolledBack
Busy = Error.Busy
Storage = Error.Storage
Cancelled = Error.Cancelled
Invalid = Error.Invalid
Callback = Error.Callback
Other = Error.Other
NoKey = Error.NoKey
WrongVault = Error.WrongVault


class _CallableListener(ProgressListener):
    """A plain function as a progress listener; what it raises stops the operation."""

    def __init__(self, fn):
        self._fn = fn

    def on_progress(self, progress):
        try:
            self._fn(progress)
        except Error:
            raise
        except BaseException as e:  # noqa: BLE001  (reported, never swallowed)
            raise Error.Callback(f"{type(e).__name__}: {e}") from e


def _listener(progress):
    if progress is None or isinstance(progress, ProgressListener):
        return progress
    if callable(progress):
        return _CallableListener(progress)
    raise TypeError("progress must be a function of one Progress, or a ProgressListener")


_generated_with_key_store = Device.with_key_store
_generated_backup = Repository.backup
_generated_restore = Repository.restore
_generated_open = Device.open_repository
_generated_create = Device.create_repository
_generated_device_init = Device.__init__
_generated_vault_config_init = VaultConfig.__init__


def _device_init(self, home):
    """The device whose state lives in ``home`` (a path, created on first use)."""
    _generated_device_init(self, _os.fspath(home))


def _open_repository(self, location, key=None):
    """The repository at ``location``, opened with ``key`` (the 64 digits) or
    with the key this device keeps for it."""
    return _generated_open(self, _os.fspath(location), key)


def _with_key_store(home, key_store):
    """The device whose state lives in ``home``, keeping the backup keys of
    password-mode repositories in ``key_store`` (a :class:`KeyStore`: the platform's
    keystore) instead of in a file in ``home``."""
    return _generated_with_key_store(_os.fspath(home), key_store)


def _create_repository(self, location):
    """A repository to create at ``location``; ``enable_key_only`` creates it."""
    return _generated_create(self, _os.fspath(location))


def _backup(self, paths, progress=None, cancel=None, vault=None):
    """Backs up ``paths`` as a new snapshot. ``progress`` is a function of one
    :class:`Progress` (or a :class:`ProgressListener`), called on the backup's
    threads one call at a time, with counts that never go back; ``cancel`` a
    :class:`CancelToken`. In password mode give ``vault`` (a :class:`VaultConfig`):
    the snapshot is left with it as the account's newest, so a new device refuses an
    older copy a store serves. Returns a :class:`BackupSummary`."""
    return _generated_backup(self, [_os.fspath(p) for p in paths], _listener(progress), cancel, vault)


def _restore(self, snapshot, target, path=None, cancel=None):
    """Restores ``snapshot`` (an id, a prefix or ``"latest"``) into ``target``
    (missing or empty), or only ``path`` of it. Returns a :class:`RestoreSummary`."""
    return _generated_restore(self, snapshot, _os.fspath(target), path, cancel)


def _vault_config_init(self, *, token=None, **fields):
    """Which vault holds the key, and as whom (docs/SDK.md). ``token``, the relay's
    token for the account, is a ``str`` or an :class:`AccountToken`; it is kept as
    an :class:`AccountToken`, which ``str()`` and ``repr()`` show as
    ``AccountToken(REDACTED)``. A malformed one raises :class:`Invalid`."""
    if isinstance(token, str):
        token = AccountToken(token)
    _generated_vault_config_init(self, token=token, **fields)


Device.__init__ = _device_init
VaultConfig.__init__ = _vault_config_init
Device.open_repository = _open_repository
Device.create_repository = _create_repository
Device.with_key_store = staticmethod(_with_key_store)
Repository.backup = _backup
Repository.restore = _restore
