//! The plaintext header of a backup file: a length byte, an optional feature-table
//! marker, then the protobuf `BackupPrefix` (key type, IV, the app's `BackupExpiry`).

use prost::{
    bytes::Buf,
    encoding::{decode_key, decode_varint, encode_key, encode_varint, skip_field, WireType},
    Message,
};

/// The IV's length: crypt15 uses GCM with a 128-bit nonce.
pub const IV_LEN: usize = 16;

/// Byte 1 when the prefix carries the app's feature table (msgstore backups). It
/// cannot start a protobuf message (it would be field 0), so it is unambiguous.
const FEATURES_MARKER: u8 = 0x01;

/// `BackupPrefix` field numbers.
const FIELD_KEY_TYPE: u32 = 1;
const FIELD_C14_CIPHER: u32 = 2;
const FIELD_C15_IV: u32 = 3;
const FIELD_INFO: u32 = 4;

/// `key_type` of end-to-end encrypted backups: the key is guarded by WhatsApp's HSM
/// vault (or is the user's 64-digit key).
pub const KEY_TYPE_HSM_CONTROLLED: u64 = 1;

/// What the header says, and where the ciphertext starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The feature-table marker byte was present.
    pub features: bool,
    /// The protobuf prefix exactly as stored (IV included).
    pub prefix: Vec<u8>,
    /// The IV, the GCM nonce.
    pub iv: [u8; IV_LEN],
    /// Bytes before the ciphertext.
    pub len: usize,
}

/// Why a header was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// The file ends inside its header.
    Truncated,
    /// The header is a crypt14 one (a server-held key).
    Crypt14,
    /// No protobuf header at all: crypt12 or older.
    Crypt12,
    /// The prefix does not parse, or has no usable IV.
    Damaged(String),
}

/// The app's `BackupExpiry`, the fields a person would want to see.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct BackupInfo {
    /// The version of WhatsApp that made the backup (`2.24.9.78`).
    #[prost(string, optional, tag = "1")]
    pub app_version: Option<String>,
    /// The last two digits of the account's phone number.
    #[prost(string, optional, tag = "3")]
    pub jid_suffix: Option<String>,
    /// The backup format's version.
    #[prost(int32, optional, tag = "4")]
    pub backup_version: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct C15Iv {
    #[prost(bytes = "vec", tag = "1")]
    iv: Vec<u8>,
}

/// One top-level field of the prefix: its number, and the bytes it spans (key
/// included) for fields copied as they are.
struct Field<'a> {
    number: u32,
    wire_type: WireType,
    raw: &'a [u8],
    /// The payload of a length-delimited field.
    body: &'a [u8],
}

/// The prefix's top-level fields in order, through prost's wire decoding.
fn fields(prefix: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = prefix;
    while !rest.is_empty() {
        let start = rest;
        let (number, wire_type) = decode_key(&mut rest).map_err(|e| e.to_string())?;
        let mut body: &[u8] = &[];
        if wire_type == WireType::LengthDelimited {
            let len = decode_varint(&mut rest).map_err(|e| e.to_string())?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= rest.len())
                .ok_or_else(|| format!("field {number} runs past the header"))?;
            body = &rest[..len];
            rest.advance(len);
        } else {
            skip_field(wire_type, number, &mut rest, Default::default())
                .map_err(|e| e.to_string())?;
        }
        let used = start.len() - rest.len();
        out.push(Field {
            number,
            wire_type,
            raw: &start[..used],
            body,
        });
    }
    Ok(out)
}

/// Reads the header at the start of `file`.
pub(crate) fn parse(file: &[u8]) -> Result<Header, HeaderError> {
    let n = usize::from(*file.first().ok_or(HeaderError::Truncated)?);
    let features = file.get(1) == Some(&FEATURES_MARKER);
    let start = if features { 2 } else { 1 };
    let prefix = file.get(start..start + n).ok_or(HeaderError::Truncated)?;
    if n == 0 {
        // crypt12 starts 00 01 and has no protobuf at all.
        return Err(HeaderError::Crypt12);
    }
    let fields = fields(prefix).map_err(HeaderError::Damaged)?;
    let field = |number| fields.iter().find(|f| f.number == number);
    if field(FIELD_C14_CIPHER).is_some() {
        return Err(HeaderError::Crypt14);
    }
    let iv = match field(FIELD_C15_IV) {
        Some(f) if f.wire_type == WireType::LengthDelimited => {
            C15Iv::decode(f.body)
                .map_err(|e| HeaderError::Damaged(format!("its IV field does not parse: {e}")))?
                .iv
        }
        _ => return Err(HeaderError::Damaged("it names no IV".into())),
    };
    let iv: [u8; IV_LEN] = iv.as_slice().try_into().map_err(|_| {
        HeaderError::Damaged(format!(
            "its IV is {} bytes, crypt15's is {IV_LEN}",
            iv.len()
        ))
    })?;
    Ok(Header {
        features,
        prefix: prefix.to_vec(),
        iv,
        len: start + n,
    })
}

/// The header bytes for `prefix` (with its IV replaced by `iv`) and the marker, or why
/// it cannot be written: the prefix must fit its one-byte length.
pub(crate) fn encode(features: bool, prefix: &[u8], iv: &[u8; IV_LEN]) -> Result<Vec<u8>, String> {
    let mut body = Vec::with_capacity(prefix.len());
    let new_iv = C15Iv { iv: iv.to_vec() }.encode_length_delimited_to_vec();
    let mut placed = false;
    let fields = fields(prefix).map_err(|e| format!("the header to copy does not parse: {e}"))?;
    for f in &fields {
        match f.number {
            // An earlier field number goes before the IV, as the app orders them.
            FIELD_C15_IV => {
                if !placed {
                    encode_key(FIELD_C15_IV, WireType::LengthDelimited, &mut body);
                    body.extend_from_slice(&new_iv);
                    placed = true;
                }
            }
            FIELD_C14_CIPHER => return Err("the header to copy is a crypt14 one".into()),
            number => {
                if !placed && number > FIELD_C15_IV {
                    encode_key(FIELD_C15_IV, WireType::LengthDelimited, &mut body);
                    body.extend_from_slice(&new_iv);
                    placed = true;
                }
                body.extend_from_slice(f.raw);
            }
        }
    }
    if !placed {
        encode_key(FIELD_C15_IV, WireType::LengthDelimited, &mut body);
        body.extend_from_slice(&new_iv);
    }
    let n = u8::try_from(body.len()).map_err(|_| {
        format!(
            "the header would be {} bytes; its length is one byte (at most 255)",
            body.len()
        )
    })?;
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(n);
    if features {
        out.push(FEATURES_MARKER);
    }
    out.extend_from_slice(&body);
    Ok(out)
}

/// The prefix of a database that was not imported: end-to-end encrypted, no app info.
pub fn minimal_prefix() -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(FIELD_KEY_TYPE, WireType::Varint, &mut out);
    encode_varint(KEY_TYPE_HSM_CONTROLLED, &mut out);
    out
}

/// The app's `BackupExpiry` of a prefix (empty fields when it has none or it does not
/// parse: it is for showing, never for deciding).
pub fn info(prefix: &[u8]) -> BackupInfo {
    let Ok(fields) = fields(prefix) else {
        return BackupInfo::default();
    };
    fields
        .iter()
        .find(|f| f.number == FIELD_INFO && f.wire_type == WireType::LengthDelimited)
        .and_then(|f| BackupInfo::decode(f.body).ok())
        .unwrap_or_default()
}

/// The prefix's `key_type`, when it has one.
pub fn key_type(prefix: &[u8]) -> Option<u64> {
    let fields = fields(prefix).ok()?;
    let f = fields
        .iter()
        .find(|f| f.number == FIELD_KEY_TYPE && f.wire_type == WireType::Varint)?;
    let mut raw = f.raw;
    decode_key(&mut raw).ok()?;
    decode_varint(&mut raw).ok()
}

/// Every field of `prefix` but the IV, as (number, bytes) in order: what an export
/// must keep.
pub fn fields_but_iv(prefix: &[u8]) -> Result<Vec<(u32, Vec<u8>)>, String> {
    Ok(fields(prefix)?
        .iter()
        .filter(|f| f.number != FIELD_C15_IV)
        .map(|f| (f.number, f.raw.to_vec()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header laid out as the app writes it: length 0x2d, the marker, key type 1,
    /// the IV a0..af, then `BackupExpiry` (app version, the number's last two digits,
    /// backup version 1, feature flags 5 and 6 set true and false).
    const SAMPLE: &str = "2d0108011a120a10a0a1a2a3a4a5a6a7a8a9aaabacadaeaf22150a09322e32342e392e37381a023432200128013000";

    fn sample() -> Vec<u8> {
        let mut bytes = hex::decode(SAMPLE).unwrap();
        bytes.extend_from_slice(&[0; 32]);
        bytes
    }

    #[test]
    fn the_apps_header_parses_and_reencodes_byte_for_byte() {
        let file = sample();
        let h = parse(&file).unwrap();
        assert!(h.features);
        assert_eq!(h.len, 0x2f);
        assert_eq!(hex::encode(h.iv), "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf");
        assert_eq!(key_type(&h.prefix), Some(KEY_TYPE_HSM_CONTROLLED));
        let info = info(&h.prefix);
        assert_eq!(info.app_version.as_deref(), Some("2.24.9.78"));
        assert_eq!(info.jid_suffix.as_deref(), Some("42"));
        assert_eq!(info.backup_version, Some(1));
        assert_eq!(encode(true, &h.prefix, &h.iv).unwrap(), file[..h.len]);
        let other = encode(true, &h.prefix, &[9; IV_LEN]).unwrap();
        let again = parse(&other).unwrap();
        assert_eq!(again.iv, [9; IV_LEN]);
        assert_eq!(
            fields_but_iv(&again.prefix).unwrap(),
            fields_but_iv(&h.prefix).unwrap()
        );
    }

    #[test]
    fn older_formats_are_named() {
        assert_eq!(parse(&[0x00, 0x01, 0x02, 0xcd]), Err(HeaderError::Crypt12));
        // A crypt14 prefix: key type 0, then field 2 (the server's cipher info).
        assert_eq!(
            parse(&[0x06, 0x01, 0x08, 0x00, 0x12, 0x02, 0x0a, 0x00]),
            Err(HeaderError::Crypt14)
        );
        assert_eq!(parse(&[]), Err(HeaderError::Truncated));
        assert_eq!(parse(&[0x81, 0x01, 0x08]), Err(HeaderError::Truncated));
    }

    #[test]
    fn a_prefix_without_a_good_iv_is_damaged() {
        let no_iv = [0x02, 0x01, 0x08, 0x01];
        assert!(matches!(parse(&no_iv), Err(HeaderError::Damaged(m)) if m.contains("no IV")));
        let short_iv = [0x06, 0x01, 0x1a, 0x04, 0x0a, 0x02, 0xaa, 0xbb];
        assert!(matches!(parse(&short_iv), Err(HeaderError::Damaged(m)) if m.contains("2 bytes")));
    }

    #[test]
    fn a_minimal_prefix_gets_its_iv_after_the_key_type() {
        let h = encode(false, &minimal_prefix(), &[1; IV_LEN]).unwrap();
        assert_eq!(
            hex::encode(&h),
            "16 0801 1a120a10 01010101010101010101010101010101".replace(' ', "")
        );
        assert_eq!(parse(&h).unwrap().iv, [1; IV_LEN]);
    }
}
