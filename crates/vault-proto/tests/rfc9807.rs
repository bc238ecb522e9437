//! backlock's OPAQUE configuration reproduces the RFC 9807 (OPAQUE) Appendix C test vectors.
//!
//! The vectors are the RFC's text, verbatim, in `tests/vectors/` (see the README there).
//! Covered: C.1.1 and C.1.2 (OPAQUE-3DH ristretto255-SHA512, without and with custom
//! identifiers) end to end, and C.2.1 (the fake answer for a client with no record).
//!
//! The protocol is driven through opaque-ke's public API only. Its randomness comes from
//! [`ReplayRng`], which hands out the vector's values in the order opaque-ke 4.0.1 draws
//! them. Every message is compared with the vector as it leaves one party, and the
//! *vector's* bytes are what the other party then receives. Every field of every vector
//! file is used: as an input, as an expected output, or (for the values opaque-ke keeps
//! private) recomputed from the checked outputs, so a wrong byte anywhere fails.

use backlock_vault_proto::suite::Suite;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use opaque_ke::generic_array::GenericArray;
use opaque_ke::key_exchange::group::Group;
use opaque_ke::key_exchange::tripledh::DiffieHellman;
use opaque_ke::keypair::PrivateKey;
use opaque_ke::ksf::Identity;
use opaque_ke::rand::{CryptoRng, RngCore};
use opaque_ke::{
    CipherSuite, ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, Identifiers, RegistrationRequest, RegistrationResponse, RegistrationUpload,
    Ristretto255, ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
};
use sha2::{Digest, Sha512};
use std::collections::{BTreeMap, VecDeque};

/// backlock's suite with the vectors' key-stretching function.
///
/// The OPRF (ristretto255-SHA512) and the key exchange (3DH over ristretto255 with
/// SHA-512) are taken from [`Suite`] itself, so this cannot drift from what backlock runs.
/// Only the KSF differs: the RFC's vectors use Identity, backlock uses Argon2id
/// (`suite::Stretch`), which sits between the OPRF output and the envelope keys and
/// changes nothing else.
struct RfcSuite;

impl CipherSuite for RfcSuite {
    type OprfCs = <Suite as CipherSuite>::OprfCs;
    type KeyExchange = <Suite as CipherSuite>::KeyExchange;
    type Ksf = Identity;
}

// RFC 9807 sizes for this configuration (SHA-512 and ristretto255), in bytes.
const NH: usize = 64;
const NPK: usize = 32;
const NSK: usize = 32;
const NM: usize = 64;
const NX: usize = 64;
const NOK: usize = 32;
// Nonce length (Nn).
const NN: usize = 32;
// A serialized OPRF element (Noe).
const NOE: usize = 32;
/// A credential response: evaluated element, masking nonce, masked (server key, envelope).
const CREDENTIAL_RESPONSE_LEN: usize = NOE + NN + NPK + NN + NM;

#[test]
fn real_vector_1_without_identifiers() {
    real_vector(Vector::parse(
        "C.1.1",
        include_str!("vectors/rfc9807-c.1.1-real-1.txt"),
    ));
}

#[test]
fn real_vector_2_with_identifiers() {
    real_vector(Vector::parse(
        "C.1.2",
        include_str!("vectors/rfc9807-c.1.2-real-2.txt"),
    ));
}

#[test]
fn fake_vector_1_client_without_record() {
    fake_vector(Vector::parse(
        "C.2.1",
        include_str!("vectors/rfc9807-c.2.1-fake-1.txt"),
    ));
}

/// Registration and login with a registered client (Appendix C.1).
fn real_vector(mut v: Vector) {
    v.check_configuration();
    let context = v.take("Context");
    let client_identity = v.take_optional("client_identity");
    let server_identity = v.take_optional("server_identity");
    let identifiers = Identifiers {
        client: client_identity.as_deref(),
        server: server_identity.as_deref(),
    };
    let oprf_seed = v.take("oprf_seed");
    let credential_identifier = v.take("credential_identifier");
    let password = v.take("password");
    let envelope_nonce = v.take("envelope_nonce");
    let masking_nonce = v.take("masking_nonce");
    let server_private_key = v.take("server_private_key");
    let server_public_key = v.take("server_public_key");
    let server_nonce = v.take("server_nonce");
    let client_nonce = v.take("client_nonce");
    let client_keyshare_seed = v.take("client_keyshare_seed");
    let server_keyshare_seed = v.take("server_keyshare_seed");
    let blind_registration = v.take("blind_registration");
    let blind_login = v.take("blind_login");
    let registration_request = v.take("registration_request");
    let registration_response = v.take("registration_response");
    let registration_upload = v.take("registration_upload");
    let ke1 = v.take("KE1");
    let ke2 = v.take("KE2");
    let ke3 = v.take("KE3");
    let export_key = v.take("export_key");
    let session_key = v.take("session_key");
    let client_public_key = v.take("client_public_key");
    let envelope = v.take("envelope");
    let private = PrivateIntermediates {
        auth_key: v.take("auth_key"),
        randomized_password: v.take("randomized_password"),
        handshake_secret: v.take("handshake_secret"),
        server_mac_key: v.take("server_mac_key"),
        client_mac_key: v.take("client_mac_key"),
        oprf_key: v.take("oprf_key"),
    };
    let name = v.finish();
    let expect = |field: &str, expected: &[u8], actual: &[u8]| {
        assert_eq!(hex::encode(actual), hex::encode(expected), "{name} {field}");
    };

    // The dummy key only answers clients without a record (see `fake_vector`); these
    // vectors have one, so any valid point will do.
    let server_setup = server_setup(&oprf_seed, &server_private_key, &server_public_key);
    expect(
        "server_public_key (from server_private_key)",
        &server_public_key,
        &server_setup.keypair().public().serialize(),
    );

    // Registration.
    let mut rng = ReplayRng::new(vec![(
        "blind_registration",
        wide_scalar_bytes(&blind_registration),
    )]);
    let client_start = ClientRegistration::<RfcSuite>::start(&mut rng, &password)
        .expect("client registration starts");
    rng.assert_drained(name, "ClientRegistration::start");
    // The client state begins with the blind: proof that the injection took effect.
    expect(
        "blind_registration (client state)",
        &blind_registration,
        &client_start.state.serialize()[..NSK],
    );
    expect(
        "registration_request",
        &registration_request,
        &client_start.message.serialize(),
    );

    let server_start = ServerRegistration::<RfcSuite>::start(
        &server_setup,
        RegistrationRequest::deserialize(&registration_request)
            .expect("registration_request deserializes"),
        &credential_identifier,
    )
    .expect("server registration starts");
    expect(
        "registration_response",
        &registration_response,
        &server_start.message.serialize(),
    );

    let mut rng = ReplayRng::new(vec![("envelope_nonce", envelope_nonce.clone())]);
    let client_finish = client_start
        .state
        .finish(
            &mut rng,
            &password,
            RegistrationResponse::deserialize(&registration_response)
                .expect("registration_response deserializes"),
            ClientRegistrationFinishParameters::new(identifiers, None),
        )
        .expect("client registration finishes");
    rng.assert_drained(name, "ClientRegistration::finish");
    let upload = client_finish.message.serialize();
    expect("registration_upload", &registration_upload, &upload);
    // The upload is client_public_key ‖ masking_key ‖ envelope.
    expect("client_public_key", &client_public_key, &upload[..NPK]);
    expect("envelope", &envelope, &upload[upload.len() - (NN + NM)..]);
    expect(
        "export_key (registration)",
        &export_key,
        &client_finish.export_key,
    );
    expect(
        "server_public_key (as the client saw it at registration)",
        &server_public_key,
        &client_finish.server_s_pk.serialize(),
    );

    // The server's password file is the upload as it arrived.
    let password_file = ServerRegistration::<RfcSuite>::finish(
        RegistrationUpload::deserialize(&registration_upload)
            .expect("registration_upload deserializes"),
    );
    expect(
        "password file (registration record)",
        &registration_upload,
        &password_file.serialize(),
    );

    // Login.
    let mut rng = ReplayRng::new(vec![
        ("blind_login", wide_scalar_bytes(&blind_login)),
        ("client_keyshare_seed", client_keyshare_seed),
        ("client_nonce", client_nonce),
    ]);
    let client_login =
        ClientLogin::<RfcSuite>::start(&mut rng, &password).expect("client login starts");
    rng.assert_drained(name, "ClientLogin::start");
    expect(
        "blind_login (client state)",
        &blind_login,
        &client_login.state.serialize()[..NSK],
    );
    expect("KE1", &ke1, &client_login.message.serialize());

    let login_parameters = ServerLoginParameters {
        context: Some(&context),
        identifiers,
    };
    let mut rng = ReplayRng::new(vec![
        // opaque-ke builds a fake record whether or not a real one exists (so that both
        // cases take the same time) and draws its masking key first; unused here.
        ("unused fake-record masking key", vec![0; NH]),
        ("masking_nonce", masking_nonce),
        ("server_keyshare_seed", server_keyshare_seed),
        ("server_nonce", server_nonce),
    ]);
    let server_login = ServerLogin::start(
        &mut rng,
        &server_setup,
        Some(password_file),
        CredentialRequest::deserialize(&ke1).expect("KE1 deserializes"),
        &credential_identifier,
        login_parameters.clone(),
    )
    .expect("server login starts");
    rng.assert_drained(name, "ServerLogin::start");
    expect("KE2", &ke2, &server_login.message.serialize());

    let mut rng = ReplayRng::new(Vec::new());
    let client_finish = client_login
        .state
        .finish(
            &mut rng,
            &password,
            CredentialResponse::deserialize(&ke2).expect("KE2 deserializes"),
            ClientLoginFinishParameters::new(Some(&context), identifiers, None),
        )
        .expect("client login finishes");
    rng.assert_drained(name, "ClientLogin::finish");
    expect("KE3", &ke3, &client_finish.message.serialize());
    expect("export_key (login)", &export_key, &client_finish.export_key);
    expect(
        "session_key (client)",
        &session_key,
        &client_finish.session_key,
    );
    expect(
        "server_public_key (as the client saw it at login)",
        &server_public_key,
        &client_finish.server_s_pk.serialize(),
    );

    let server_finish = server_login
        .state
        .finish(
            CredentialFinalization::deserialize(&ke3).expect("KE3 deserializes"),
            login_parameters,
        )
        .expect("server accepts KE3");
    expect(
        "session_key (server)",
        &session_key,
        &server_finish.session_key,
    );

    private.check(
        name,
        &Transcript {
            context: &context,
            client_identity: client_identity.as_deref().unwrap_or(&client_public_key),
            server_identity: server_identity.as_deref().unwrap_or(&server_public_key),
            server_public_key: &server_public_key,
            envelope_nonce: &envelope_nonce,
            registration_request: &registration_request,
            registration_response: &registration_response,
            registration_upload: &registration_upload,
            ke1: &ke1,
            ke2: &ke2,
            ke3: &ke3,
            export_key: &export_key,
        },
    );
}

/// The server's answer to a client with no record (Appendix C.2), which must look like a
/// real one. opaque-ke's fake record takes its client key from `ServerSetup`'s dummy key
/// and its masking key from the RNG, so both inputs are injected there.
fn fake_vector(mut v: Vector) {
    v.check_configuration();
    let context = v.take("Context");
    let client_identity = v.take("client_identity");
    let server_identity = v.take("server_identity");
    let identifiers = Identifiers {
        client: Some(&client_identity),
        server: Some(&server_identity),
    };
    let oprf_seed = v.take("oprf_seed");
    let credential_identifier = v.take("credential_identifier");
    let masking_nonce = v.take("masking_nonce");
    let client_private_key = v.take("client_private_key");
    let client_public_key = v.take("client_public_key");
    let server_private_key = v.take("server_private_key");
    let server_public_key = v.take("server_public_key");
    let server_nonce = v.take("server_nonce");
    // The client's side is given as KE1; its seed is checked against KE1 below.
    let client_keyshare_seed = v.take("client_keyshare_seed");
    let server_keyshare_seed = v.take("server_keyshare_seed");
    let masking_key = v.take("masking_key");
    let ke1 = v.take("KE1");
    let ke2 = v.take("KE2");
    let name = v.finish();
    let expect = |field: &str, expected: &[u8], actual: &[u8]| {
        assert_eq!(hex::encode(actual), hex::encode(expected), "{name} {field}");
    };

    let server_setup = server_setup(&oprf_seed, &server_private_key, &client_public_key);
    expect(
        "server_public_key (from server_private_key)",
        &server_public_key,
        &server_setup.keypair().public().serialize(),
    );
    let client_key =
        PrivateKey::<Ristretto255>::deserialize(&client_private_key).expect("client key");
    expect(
        "client_public_key (from client_private_key)",
        &client_public_key,
        &client_key.public_key().serialize(),
    );
    // KE1 is blinded element ‖ client_nonce ‖ client keyshare; the keyshare is derived
    // from its seed with DeriveDiffieHellmanKeyPair, public through opaque-ke's group API.
    let client_keyshare = <Ristretto255 as Group>::derive_scalar(GenericArray::clone_from_slice(
        &client_keyshare_seed,
    ))
    .expect("keyshare from seed");
    expect(
        "client keyshare in KE1 (from client_keyshare_seed)",
        &ke1[NOE + NN..],
        &<Ristretto255 as Group>::serialize_pk(&<Ristretto255 as Group>::public_key(
            &client_keyshare,
        )),
    );

    let mut rng = ReplayRng::new(vec![
        ("masking_key", masking_key),
        ("masking_nonce", masking_nonce),
        ("server_keyshare_seed", server_keyshare_seed),
        ("server_nonce", server_nonce),
    ]);
    let server_login = ServerLogin::<RfcSuite>::start(
        &mut rng,
        &server_setup,
        None,
        CredentialRequest::deserialize(&ke1).expect("KE1 deserializes"),
        &credential_identifier,
        ServerLoginParameters {
            context: Some(&context),
            identifiers,
        },
    )
    .expect("server answers an unknown client");
    rng.assert_drained(name, "ServerLogin::start");
    expect("KE2", &ke2, &server_login.message.serialize());
}

/// `ServerSetup` from the vector's OPRF seed and server key, restored the documented
/// way: `serialize()` is oprf_seed ‖ server private key ‖ dummy public key.
fn server_setup(
    oprf_seed: &[u8],
    server_private_key: &[u8],
    dummy_public_key: &[u8],
) -> ServerSetup<RfcSuite> {
    let bytes = [oprf_seed, server_private_key, dummy_public_key].concat();
    ServerSetup::deserialize(&bytes).expect("the vector's seed and keys form a ServerSetup")
}

/// RNG bytes that make voprf 0.5.0 blind with exactly `scalar`.
///
/// voprf blinds with curve25519-dalek's `Scalar::random`: one 64-byte `fill_bytes`,
/// reduced mod l as a little-endian integer. A canonical scalar followed by 32 zero bytes
/// is already below l, so it reduces to itself.
fn wide_scalar_bytes(scalar: &[u8]) -> Vec<u8> {
    assert_eq!(scalar.len(), NSK, "a ristretto255 scalar");
    [scalar, &[0; 32]].concat()
}

/// Replays the vector's random values, one per `fill_bytes` call, in order.
///
/// opaque-ke 4.0.1 draws every random value with one `fill_bytes` of exactly its size.
/// A draw of another size, an extra draw or a value left over fails the test, so a
/// change in the library's order cannot quietly put a value in the wrong place.
struct ReplayRng {
    draws: VecDeque<(&'static str, Vec<u8>)>,
}

impl ReplayRng {
    fn new(draws: Vec<(&'static str, Vec<u8>)>) -> Self {
        ReplayRng {
            draws: draws.into(),
        }
    }

    fn assert_drained(&self, vector: &str, step: &str) {
        let left: Vec<_> = self.draws.iter().map(|(label, _)| *label).collect();
        assert!(left.is_empty(), "{vector}: {step} did not draw {left:?}");
    }
}

impl RngCore for ReplayRng {
    fn next_u32(&mut self) -> u32 {
        panic!("opaque-ke drew a u32; the replay only serves fill_bytes")
    }

    fn next_u64(&mut self) -> u64 {
        panic!("opaque-ke drew a u64; the replay only serves fill_bytes")
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let (label, bytes) = self.draws.pop_front().unwrap_or_else(|| {
            panic!(
                "opaque-ke drew {} bytes the vector does not provide",
                dest.len()
            )
        });
        assert_eq!(
            dest.len(),
            bytes.len(),
            "opaque-ke drew {} bytes where {label} ({} bytes) was next",
            dest.len(),
            bytes.len()
        );
        dest.copy_from_slice(&bytes);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), opaque_ke::rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// Test-only: the bytes are public vectors, which is the point.
impl CryptoRng for ReplayRng {}

/// Public messages and values of one real vector, already checked against opaque-ke.
struct Transcript<'a> {
    context: &'a [u8],
    /// The identities as they enter the protocol: the public keys when none are given.
    client_identity: &'a [u8],
    server_identity: &'a [u8],
    server_public_key: &'a [u8],
    envelope_nonce: &'a [u8],
    registration_request: &'a [u8],
    registration_response: &'a [u8],
    registration_upload: &'a [u8],
    ke1: &'a [u8],
    ke2: &'a [u8],
    ke3: &'a [u8],
    export_key: &'a [u8],
}

/// Intermediate values that opaque-ke 4.0.1 computes but exposes only under its own
/// `#[cfg(test)]`. They cannot be read from the library, so they are recomputed from the
/// checked transcript with RFC 9807's formulas (envelope creation, the 3DH key schedule
/// and its MACs): each is then tied to outputs opaque-ke produced.
struct PrivateIntermediates {
    auth_key: Vec<u8>,
    randomized_password: Vec<u8>,
    handshake_secret: Vec<u8>,
    server_mac_key: Vec<u8>,
    client_mac_key: Vec<u8>,
    oprf_key: Vec<u8>,
}

impl PrivateIntermediates {
    fn check(&self, name: &str, t: &Transcript<'_>) {
        let expect = |field: &str, expected: &[u8], actual: &[u8]| {
            assert_eq!(hex::encode(actual), hex::encode(expected), "{name} {field}");
        };

        // OPRF Evaluate is oprf_key · blinded element, at registration and at login.
        // opaque-ke's public group API does the scalar multiplication.
        let oprf_key = <Ristretto255 as Group>::deserialize_take_sk(&mut &self.oprf_key[..])
            .expect("oprf_key is a scalar");
        for (step, request, response) in [
            (
                "registration",
                t.registration_request,
                t.registration_response,
            ),
            ("login", t.ke1, t.ke2),
        ] {
            let blinded = <Ristretto255 as Group>::deserialize_take_pk(&mut &request[..NOE])
                .expect("blinded element is a point");
            expect(
                &format!("oprf_key · blinded element ({step})"),
                &response[..NOE],
                &oprf_key.diffie_hellman(&blinded),
            );
        }

        // Envelope keys: Expand(randomized_password, …).
        let nonce = t.envelope_nonce;
        let rwd = &self.randomized_password;
        expect(
            "masking_key (from randomized_password)",
            &t.registration_upload[NPK..NPK + NH],
            &expand(rwd, &[b"MaskingKey"]),
        );
        expect(
            "export_key (from randomized_password)",
            t.export_key,
            &expand(rwd, &[nonce, b"ExportKey"]),
        );
        expect(
            "auth_key (from randomized_password)",
            &self.auth_key,
            &expand(rwd, &[nonce, b"AuthKey"]),
        );
        // auth_tag = MAC(auth_key, envelope_nonce ‖ CleartextCredentials).
        let auth_tag = mac(
            &self.auth_key,
            &[
                nonce,
                t.server_public_key,
                &length_prefixed(t.server_identity),
                &length_prefixed(t.client_identity),
            ],
        );
        expect(
            "envelope auth_tag (from auth_key)",
            &t.registration_upload[t.registration_upload.len() - NM..],
            &auth_tag,
        );

        // MAC keys: Derive-Secret(handshake_secret, "ServerMAC" / "ClientMAC", "").
        expect(
            "server_mac_key (from handshake_secret)",
            &self.server_mac_key,
            &expand_label(&self.handshake_secret, b"ServerMAC", b""),
        );
        expect(
            "client_mac_key (from handshake_secret)",
            &self.client_mac_key,
            &expand_label(&self.handshake_secret, b"ClientMAC", b""),
        );
        // The MACs in KE2 and KE3 are over the hashed preamble, which ends with KE2
        // minus its MAC.
        let ke2_without_mac = &t.ke2[..CREDENTIAL_RESPONSE_LEN + NN + NPK];
        let server_mac = &t.ke2[ke2_without_mac.len()..];
        let preamble = [
            b"OPAQUEv1-".as_slice(),
            &length_prefixed(t.context),
            &length_prefixed(t.client_identity),
            t.ke1,
            &length_prefixed(t.server_identity),
            ke2_without_mac,
        ]
        .concat();
        expect(
            "KE2 server_mac (from server_mac_key)",
            server_mac,
            &mac(&self.server_mac_key, &[&Sha512::digest(&preamble)]),
        );
        expect(
            "KE3 client_mac (from client_mac_key)",
            t.ke3,
            &mac(
                &self.client_mac_key,
                &[&Sha512::digest([preamble.as_slice(), server_mac].concat())],
            ),
        );
    }
}

/// HKDF-Expand with SHA-512 to Nh bytes.
fn expand(prk: &[u8], info: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![0; NH];
    Hkdf::<Sha512>::from_prk(prk)
        .expect("a 64-byte PRK")
        .expand_multi_info(info, &mut out)
        .expect("Nh bytes of output");
    out
}

/// RFC 9807 Expand-Label to Nx bytes: the label is "OPAQUE-" ‖ label, both it and the
/// context one-byte length-prefixed, after a two-byte output length.
fn expand_label(secret: &[u8], label: &[u8], context: &[u8]) -> Vec<u8> {
    let length = u16::try_from(NX).expect("Nx fits u16").to_be_bytes();
    let label_len = [u8::try_from(b"OPAQUE-".len() + label.len()).expect("short label")];
    let context_len = [u8::try_from(context.len()).expect("short context")];
    expand(
        secret,
        &[
            &length,
            &label_len,
            b"OPAQUE-",
            label,
            &context_len,
            context,
        ],
    )
}

/// HMAC-SHA512 over the concatenation of `parts`.
fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// I2OSP(len, 2) ‖ bytes.
fn length_prefixed(bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len())
        .expect("short field")
        .to_be_bytes();
    [len.as_slice(), bytes].concat()
}

/// One vector section of RFC 9807 Appendix C, as `name: value` fields.
///
/// The files are the RFC's text: `name: value` lines indented three spaces, long hex
/// values wrapped onto indented continuation lines, section headings at the margin, and
/// our `#` header on top. Fields are taken out one by one and [`Vector::finish`] fails on
/// any left over, so no field in a file goes unchecked.
struct Vector {
    name: &'static str,
    fields: BTreeMap<String, String>,
}

impl Vector {
    fn parse(name: &'static str, text: &str) -> Self {
        let mut fields = BTreeMap::new();
        let mut open: Option<String> = None;
        for line in text.lines() {
            if line.starts_with('#') || !line.starts_with("   ") {
                // Header, blank line or section heading: ends any open field.
                open = None;
                continue;
            }
            let line = line.trim();
            if let Some((key, value)) = line.split_once(": ") {
                let previous = fields.insert(key.to_string(), value.to_string());
                assert!(previous.is_none(), "{name}: field {key} appears twice");
                open = Some(key.to_string());
            } else {
                let key = open
                    .as_ref()
                    .unwrap_or_else(|| panic!("{name}: stray line {line:?}"));
                let value = fields.get_mut(key).expect("open field exists");
                value.push_str(line);
            }
        }
        Vector { name, fields }
    }

    fn take_text(&mut self, field: &str) -> String {
        self.fields
            .remove(field)
            .unwrap_or_else(|| panic!("{}: no field {field}", self.name))
    }

    fn take(&mut self, field: &str) -> Vec<u8> {
        let value = self.take_text(field);
        hex::decode(&value).unwrap_or_else(|e| panic!("{}: {field} is not hex: {e}", self.name))
    }

    fn take_optional(&mut self, field: &str) -> Option<Vec<u8>> {
        self.fields.contains_key(field).then(|| self.take(field))
    }

    /// The vector must be for the configuration under test (with the RFC's Identity KSF).
    fn check_configuration(&mut self) {
        for (field, expected) in [
            ("OPRF", "ristretto255-SHA512"),
            ("Hash", "SHA512"),
            ("KSF", "Identity"),
            ("KDF", "HKDF-SHA512"),
            ("MAC", "HMAC-SHA512"),
            ("Group", "ristretto255"),
        ] {
            assert_eq!(self.take_text(field), expected, "{}: {field}", self.name);
        }
        for (field, expected) in [
            ("Nh", NH),
            ("Npk", NPK),
            ("Nsk", NSK),
            ("Nm", NM),
            ("Nx", NX),
            ("Nok", NOK),
        ] {
            let value = self.take_text(field);
            assert_eq!(value, expected.to_string(), "{}: {field}", self.name);
        }
    }

    /// Every field has been used; returns the vector's name for messages.
    fn finish(self) -> &'static str {
        let left: Vec<_> = self.fields.keys().collect();
        assert!(
            left.is_empty(),
            "{}: fields never checked: {left:?}",
            self.name
        );
        self.name
    }
}
