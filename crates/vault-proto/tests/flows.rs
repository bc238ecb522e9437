//! The device and vault halves of every flow, wired together in memory.

use backlock_core::key::BackupKey;
use backlock_vault_proto::client::{start_recovery, start_registration, ClientError};
use backlock_vault_proto::owner::{self, OwnerKey, OwnerOp};
use backlock_vault_proto::password::Password;
use backlock_vault_proto::server::{password_file, ServerKeys, StepError, PASSWORD_FILE_LEN};
use backlock_vault_proto::suite::Stretch;
use backlock_vault_proto::wire::{
    RecoverFinishReply, RecoverStartReply, RegisterFinish, RegisterStartReply,
};
use backlock_vault_proto::wrap;

const ACCOUNT: &str = "+15550100";

struct Stored {
    record_id: [u8; 16],
    file: Vec<u8>,
    wrapped: Vec<u8>,
}

fn register(
    server: &ServerKeys,
    password: &str,
    key: &BackupKey,
    ksf: &Stretch,
) -> (Stored, RegisterFinish) {
    let password = Password::new(password.into());
    let (started, request) = start_registration(&password).unwrap();
    let record_id = [7; 16];
    let response = server
        .evaluate_registration(ACCOUNT, &record_id, &request)
        .unwrap();
    let reply = RegisterStartReply {
        record_id,
        response,
    };
    let finish = started
        .finish(&password, ACCOUNT, &reply, &server.public_key(), key, ksf)
        .unwrap();
    let stored = Stored {
        record_id,
        file: password_file(&finish.upload).unwrap(),
        wrapped: finish.wrapped.clone(),
    };
    (stored, finish)
}

fn recover(
    server: &ServerKeys,
    stored: &Stored,
    password: &str,
    ksf: &Stretch,
) -> Result<BackupKey, ClientError> {
    let password = Password::new(password.into());
    let (started, ke1) = start_recovery(&password).unwrap();
    let (pending, ke2) = server
        .start_login(&stored.file, ACCOUNT, &stored.record_id, &ke1)
        .unwrap();
    let reply = RecoverStartReply {
        session: [9; 16],
        ke2,
        attempts_left: 9,
    };
    let (finish, recovered) =
        started.finish(&password, ACCOUNT, &reply, &server.public_key(), ksf)?;
    let session_key = pending.finish(ACCOUNT, &finish.ke3).unwrap();
    let released = wrap::release(&session_key, &finish.session, ACCOUNT, &stored.wrapped);
    recovered.open(
        ACCOUNT,
        &RecoverFinishReply {
            released,
            generation: 1,
            attempts_left: 10,
        },
    )
}

#[test]
fn register_recover_wrong_password_and_pinning() {
    let ksf = Stretch::memoized();
    let server = ServerKeys::generate();
    let key = BackupKey::generate();
    let (stored, finish) = register(&server, "correct horse", &key, &ksf);
    assert_eq!(stored.file.len(), PASSWORD_FILE_LEN);

    // The vault stores neither the key nor the password.
    for blob in [&stored.file, &stored.wrapped, &finish.upload] {
        assert!(!blob.windows(32).any(|w| w == key.expose_secret()));
        assert!(!blob.windows(13).any(|w| w == b"correct horse"));
    }

    let recovered = recover(&server, &stored, "correct horse", &ksf).unwrap();
    assert_eq!(recovered.expose_secret(), key.expose_secret());
    assert_eq!(
        recover(&server, &stored, "correct horsf", &ksf).err(),
        Some(ClientError::WrongPassword)
    );

    // Another vault's key is refused even when it holds the record.
    let impostor = ServerKeys::generate();
    let password = Password::new("correct horse".into());
    let (started, ke1) = start_recovery(&password).unwrap();
    let (_, ke2) = server
        .start_login(&stored.file, ACCOUNT, &stored.record_id, &ke1)
        .unwrap();
    let reply = RecoverStartReply {
        session: [0; 16],
        ke2,
        attempts_left: 1,
    };
    assert!(matches!(
        started.finish(&password, ACCOUNT, &reply, &impostor.public_key(), &ksf),
        Err(ClientError::WrongServer { .. })
    ));
}

#[test]
fn server_rejects_a_forged_ke3_and_garbage() {
    let ksf = Stretch::memoized();
    let server = ServerKeys::generate();
    let (stored, _) = register(&server, "correct horse", &BackupKey::generate(), &ksf);
    let (_, ke1) = start_recovery(&Password::new("guess123".into())).unwrap();
    let (pending, ke2) = server
        .start_login(&stored.file, ACCOUNT, &stored.record_id, &ke1)
        .unwrap();
    // A KE3 of the right length that is not the client's MAC.
    let forged = vec![0x42; 64];
    assert_eq!(
        pending.finish(ACCOUNT, &forged).err(),
        Some(StepError::WrongPassword)
    );
    assert_eq!(
        server
            .start_login(&stored.file, ACCOUNT, &stored.record_id, &ke2)
            .err(),
        Some(StepError::Malformed)
    );
    // A valid KE1 with one byte appended is refused, not read as its prefix (which
    // opaque-ke alone would do); without the byte it is accepted.
    let (_, ke1) = start_recovery(&Password::new("guess123".into())).unwrap();
    let longer = [&ke1[..], &[0]].concat();
    assert_eq!(
        server
            .start_login(&stored.file, ACCOUNT, &stored.record_id, &longer)
            .err(),
        Some(StepError::Malformed)
    );
    assert!(server
        .start_login(&stored.file, ACCOUNT, &stored.record_id, &ke1)
        .is_ok());
    assert_eq!(
        server
            .evaluate_registration(ACCOUNT, &[0; 16], b"short")
            .err(),
        Some(StepError::Malformed)
    );
}

#[test]
fn a_new_record_id_is_a_new_oprf_key() {
    // The same password registered under two record ids yields unrelated OPRF outputs,
    // so evaluating registrations never tests guesses against an existing record.
    let server = ServerKeys::generate();
    let password = Password::new("correct horse".into());
    let (_, request) = start_registration(&password).unwrap();
    let a = server
        .evaluate_registration(ACCOUNT, &[1; 16], &request)
        .unwrap();
    let b = server
        .evaluate_registration(ACCOUNT, &[2; 16], &request)
        .unwrap();
    assert_ne!(a, b);
}

#[test]
fn server_keys_round_trip_and_redact() {
    let server = ServerKeys::generate();
    let again = ServerKeys::from_bytes(&server.to_bytes()).unwrap();
    assert_eq!(again.public_key(), server.public_key());
    let debug = format!("{server:?}");
    assert!(!debug.contains(&hex::encode(&server.to_bytes()[..16])));
    let owner = OwnerKey::derive(&BackupKey::from_bytes([1; 32]));
    let scope = owner::Scope {
        fleet: backlock_vault_proto::token::FleetId::of(&server.public_key()),
        account: ACCOUNT,
        generation: 1,
        window: owner::Window::from(1_000),
    };
    let sig = owner.sign(OwnerOp::Replace, &scope, b"x");
    assert!(owner::verify(
        &owner.public_key(),
        OwnerOp::Replace,
        &scope,
        b"x",
        &sig
    ));
}
