//! Witness cosignatures: the C2SP tlog-cosignature format (Ed25519 `cosignature/v1`) and the
//! request and answers of the C2SP tlog-witness `add-checkpoint` call.
//!
//! A witness is named by a verifier key of signature type 0x04:
//! `<name>+<8 hex digits of the key ID>+<base64(0x04 || 32-byte Ed25519 key)>`, whose key ID is
//! the first four bytes of SHA-256(name || 0x0A || 0x04 || key). Its cosignature on a checkpoint
//! is a note signature line
//!
//! ```text
//! — <name> base64(key ID || 8-byte big-endian timestamp || 64-byte Ed25519 signature)
//! ```
//!
//! over the message `cosignature/v1\ntime <timestamp>\n` followed by the checkpoint's whole note
//! text. Only this type is read: ML-DSA-44 cosignatures (type 0x06) and lines of any other key
//! are ignored, as the signed-note spec asks of unknown keys. A cosigned checkpoint is the log's
//! signed note with the witnesses' lines appended; it still verifies under the log's verifier
//! key, since verifiers ignore signatures by keys they do not know.

use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use super::checkpoint::{parse_signature_line, split_note, validate_origin, SIGNATURE_PREFIX};
use super::merkle::Hash;

/// The signed-note signature type of timestamped Ed25519 checkpoint cosignatures.
pub const SIGNATURE_TYPE_COSIGNATURE_V1: u8 = 0x04;

/// The `Content-Type` of a witness's 409 answer, whose body is the size it last cosigned.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// The most consistency proof lines the protocol allows in one request.
pub const MAX_PROOF_LINES: usize = 63;

/// The most signature lines read from a witness's answer; a witness returns one or a few.
const MAX_RESPONSE_LINES: usize = 16;

/// The largest timestamp a cosignature may carry (2^63 - 1).
const MAX_TIMESTAMP: u64 = i64::MAX as u64;

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("invalid witness verifier key: {0}")]
    InvalidKey(String),
    #[error("malformed answer: {0}")]
    MalformedResponse(String),
    #[error("the answer carries no cosignature by {name}+{key_id:08x}")]
    NoCosignature { name: String, key_id: u32 },
    #[error("the cosignature by {name}+{key_id:08x} does not verify: {reason}")]
    BadCosignature {
        name: String,
        key_id: u32,
        reason: &'static str,
    },
    #[error("{path}: {error}", path = .path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// The signed-note key ID of an Ed25519 cosigner key: the first four bytes, big-endian, of
/// SHA-256(name || 0x0A || 0x04 || 32-byte public key).
pub fn cosigner_key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', SIGNATURE_TYPE_COSIGNATURE_V1]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The message an Ed25519 cosignature signs: the header line, the timestamp line, and the
/// checkpoint's note text (with its final newline, without signature lines).
pub fn cosigned_message(checkpoint_text: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{checkpoint_text}")
}

/// One verified Ed25519 cosignature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosignature {
    /// The witness's key name.
    pub name: String,
    pub key_id: u32,
    /// POSIX seconds at which the witness signed.
    pub timestamp: u64,
    pub signature: [u8; 64],
}

impl Cosignature {
    /// The note signature line, without its newline.
    pub fn line(&self) -> String {
        let mut blob = Vec::with_capacity(4 + 8 + 64);
        blob.extend_from_slice(&self.key_id.to_be_bytes());
        blob.extend_from_slice(&self.timestamp.to_be_bytes());
        blob.extend_from_slice(&self.signature);
        format!("{SIGNATURE_PREFIX}{} {}", self.name, BASE64.encode(blob))
    }
}

/// A witness's verifier key: its name, key ID and Ed25519 cosigner key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessKey {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl WitnessKey {
    /// Reads `<name>+<8 hex digits>+<base64(0x04 || 32-byte key)>` and checks the key ID.
    pub fn parse(text: &str) -> Result<Self, WitnessError> {
        let invalid = |reason: String| WitnessError::InvalidKey(reason);
        let text = text.trim_end_matches(['\n', '\r']);
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("expected NAME+KEYID+KEY".into()));
        };
        validate_origin(name)
            .map_err(|error| invalid(format!("the key name is not valid: {error}")))?;
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("the key ID is not 8 hex digits".into()));
        }
        let key_id = u32::from_str_radix(id, 16)
            .map_err(|_| invalid("the key ID is not 8 hex digits".into()))?;
        let bytes = BASE64
            .decode(key)
            .map_err(|_| invalid("the key is not standard base64".into()))?;
        let Some((&signature_type, public_key)) = bytes.split_first() else {
            return Err(invalid("the key is empty".into()));
        };
        if signature_type != SIGNATURE_TYPE_COSIGNATURE_V1 {
            return Err(invalid(format!(
                "signature type {signature_type:#04x} is not an Ed25519 cosignature/v1 key \
                 (0x04); other cosignature types are not supported"
            )));
        }
        let public_key = <[u8; 32]>::try_from(public_key)
            .map_err(|_| invalid("an Ed25519 key is 32 bytes".into()))?;
        if cosigner_key_id(name, &public_key) != key_id {
            return Err(invalid(
                "the key ID does not match the key name and key".into(),
            ));
        }
        let key = VerifyingKey::from_bytes(&public_key)
            .map_err(|error| invalid(format!("not an Ed25519 key: {error}")))?;
        if key.is_weak() {
            return Err(invalid("a weak Ed25519 key".into()));
        }
        Ok(WitnessKey {
            name: name.to_string(),
            key_id,
            key,
        })
    }

    /// Reads a file holding one witness verifier key; errors name the path.
    pub fn load(path: &Path) -> Result<Self, WitnessError> {
        let text = fs::read_to_string(path).map_err(|error| WitnessError::Io {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(text.trim())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Checks one note signature line against this key over `checkpoint_text`: `Ok(None)` when
    /// the line is another key's (another name or key ID), an error when it is this key's and
    /// does not verify.
    pub fn verify_line(
        &self,
        line: &str,
        checkpoint_text: &str,
    ) -> Result<Option<Cosignature>, WitnessError> {
        let (name, key_id, blob) = parse_signature_line(line)
            .map_err(|error| WitnessError::MalformedResponse(error.to_string()))?;
        if name != self.name || key_id != self.key_id {
            return Ok(None);
        }
        let bad = |reason| WitnessError::BadCosignature {
            name: self.name.clone(),
            key_id,
            reason,
        };
        if blob.len() != 8 + 64 {
            return Err(bad("not an 8-byte timestamp and a 64-byte signature"));
        }
        let mut timestamp = [0u8; 8];
        timestamp.copy_from_slice(&blob[..8]);
        let timestamp = u64::from_be_bytes(timestamp);
        if timestamp == 0 || timestamp > MAX_TIMESTAMP {
            return Err(bad("its timestamp is zero or above 2^63 - 1"));
        }
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&blob[8..]);
        let message = cosigned_message(checkpoint_text, timestamp);
        self.key
            .verify_strict(message.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| bad("the signature is not the witness key's over this checkpoint"))?;
        Ok(Some(Cosignature {
            name: self.name.clone(),
            key_id,
            timestamp,
            signature,
        }))
    }

    /// Reads the body of a witness's 200 answer to `add-checkpoint` (one or more signature
    /// lines, each ending in a newline) and returns this key's cosignatures on
    /// `checkpoint_text`. Lines by other keys are ignored; a line by this key that does not
    /// verify, or no line by this key at all, is an error.
    pub fn cosignatures_in_response(
        &self,
        body: &str,
        checkpoint_text: &str,
    ) -> Result<Vec<Cosignature>, WitnessError> {
        let malformed = |reason: &str| WitnessError::MalformedResponse(reason.to_string());
        let lines = body
            .strip_suffix('\n')
            .ok_or_else(|| malformed("empty, or the last line does not end in a newline"))?;
        let lines: Vec<&str> = lines.split('\n').collect();
        if lines.len() > MAX_RESPONSE_LINES {
            return Err(malformed("more than 16 signature lines"));
        }
        let mut found = Vec::new();
        for line in lines {
            if let Some(cosignature) = self.verify_line(line, checkpoint_text)? {
                found.push(cosignature);
            }
        }
        if found.is_empty() {
            return Err(WitnessError::NoCosignature {
                name: self.name.clone(),
                key_id: self.key_id,
            });
        }
        Ok(found)
    }

    /// This key's valid cosignatures among the signature lines of a cosigned checkpoint `note`.
    /// A line by this key that does not verify is an error, as the signed-note spec asks.
    pub fn cosignatures_in_note(&self, note: &str) -> Result<Vec<Cosignature>, WitnessError> {
        let (text, lines) =
            split_note(note).map_err(|error| WitnessError::MalformedResponse(error.to_string()))?;
        let mut found = Vec::new();
        for line in lines {
            if let Some(cosignature) = self.verify_line(line, text)? {
                found.push(cosignature);
            }
        }
        Ok(found)
    }
}

/// `<name>+<key ID as 8 lowercase hex digits>+<base64(0x04 || public key)>`.
impl std::fmt::Display for WitnessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = vec![SIGNATURE_TYPE_COSIGNATURE_V1];
        key.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64.encode(key)
        )
    }
}

/// The note text of a signed note (its lines before the signatures, with the final newline).
pub fn note_text(note: &str) -> Result<&str, WitnessError> {
    split_note(note)
        .map(|(text, _)| text)
        .map_err(|error| WitnessError::MalformedResponse(error.to_string()))
}

/// The body of an `add-checkpoint` request: the `old` size line, one base64 line per hash of the
/// consistency proof from `old_size` to the checkpoint's size, an empty line, the signed note.
pub fn add_checkpoint_body(old_size: u64, proof: &[Hash], note: &str) -> String {
    let mut body = format!("old {old_size}\n");
    for hash in proof {
        body.push_str(&BASE64.encode(hash));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// The size in a 409 answer's body: a decimal number without leading zeros and a newline.
pub fn parse_size_response(body: &str) -> Option<u64> {
    let digits = body.strip_suffix('\n')?;
    let canonical = digits == "0" || (!digits.is_empty() && !digits.starts_with('0'));
    if !canonical || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `note` with the cosignature `lines` appended as further signature lines (each without its
/// newline; one already in the note is not repeated). The note must end in a newline, as a
/// signed note does.
pub fn append_cosignature_lines(note: &str, lines: &[String]) -> String {
    let mut out = note.to_string();
    for line in lines {
        let already = note.lines().any(|existing| existing == line);
        if !already && !line.is_empty() && !line.contains('\n') {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    /// RFC 8032's first test key, as a witness named "witness.example/w1".
    fn rfc8032_witness() -> SigningKey {
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .expect("the test's own input is valid")
                .try_into()
                .expect("the test's own input is valid");
        SigningKey::from_bytes(&seed)
    }

    const VECTOR_VKEY: &str =
        "witness.example/w1+eb762cc2+BNdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea";
    const VECTOR_TEXT: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    const VECTOR_LINE: &str = "\u{2014} witness.example/w1 63YswgAAAABkGFDL+TPmh4BYuAjsYRoqMJCWb/gWJaeRF/kmm5tlCr9sJ57DLErur7K0yDXc2ArN+TIuotuB/HbuL3AJsp3bv/aNCQ==";

    /// A vector made outside this code, with Python's `cryptography` package, from the spec's
    /// text: the RFC 8032 key as "witness.example/w1", the spec's example checkpoint and its
    /// timestamp 1679315147. Our key ID, verifier key and line agree byte for byte.
    #[test]
    fn an_independently_made_cosignature_verifies_and_is_reproduced() {
        let signing = rfc8032_witness();
        let key = WitnessKey::parse(VECTOR_VKEY).expect("the test's own input is valid");
        assert_eq!(key.key_id(), 0xeb76_2cc2);
        assert_eq!(
            cosigner_key_id("witness.example/w1", signing.verifying_key().as_bytes()),
            0xeb76_2cc2
        );
        assert_eq!(key.to_string(), VECTOR_VKEY);
        let cosignature = key
            .verify_line(VECTOR_LINE, VECTOR_TEXT)
            .expect("the test's own input is valid")
            .expect("this key's line");
        assert_eq!(cosignature.timestamp, 1_679_315_147);
        assert_eq!(cosignature.line(), VECTOR_LINE);
        let ours = signing.sign(cosigned_message(VECTOR_TEXT, 1_679_315_147).as_bytes());
        assert_eq!(ours.to_bytes(), cosignature.signature);
        // Another checkpoint, or another time, does not verify.
        assert!(key
            .verify_line(VECTOR_LINE, &VECTOR_TEXT.replace("20852163", "20852164"))
            .is_err());
    }

    fn cosign(signing: &SigningKey, name: &str, text: &str, timestamp: u64) -> String {
        let signature = signing.sign(cosigned_message(text, timestamp).as_bytes());
        Cosignature {
            name: name.into(),
            key_id: cosigner_key_id(name, signing.verifying_key().as_bytes()),
            timestamp,
            signature: signature.to_bytes(),
        }
        .line()
    }

    #[test]
    fn responses_keep_only_the_configured_witness_and_refuse_a_bad_line() {
        let key = WitnessKey::parse(VECTOR_VKEY).expect("the test's own input is valid");
        let other = SigningKey::from_bytes(&[7; 32]);
        let other_line = cosign(&other, "witness.example/w2", VECTOR_TEXT, 5);
        let body = format!("{other_line}\n{VECTOR_LINE}\n");
        let found = key
            .cosignatures_in_response(&body, VECTOR_TEXT)
            .expect("the test's own input is valid");
        assert_eq!(found.len(), 1);
        assert!(matches!(
            key.cosignatures_in_response(&format!("{other_line}\n"), VECTOR_TEXT),
            Err(WitnessError::NoCosignature { .. })
        ));
        // Another key under this key's name and ID: checked, and refused.
        let forged = cosign(&other, "witness.example/w1", VECTOR_TEXT, 5);
        let mut blob = BASE64
            .decode(
                forged
                    .rsplit(' ')
                    .next()
                    .expect("the test's own input is valid"),
            )
            .expect("the test's own input is valid");
        blob[..4].copy_from_slice(&key.key_id().to_be_bytes());
        let forged = format!("\u{2014} witness.example/w1 {}", BASE64.encode(&blob));
        assert!(matches!(
            key.cosignatures_in_response(&format!("{VECTOR_LINE}\n{forged}\n"), VECTOR_TEXT),
            Err(WitnessError::BadCosignature { .. })
        ));
        // A zero timestamp is refused.
        let signing = rfc8032_witness();
        let zero = cosign(&signing, "witness.example/w1", VECTOR_TEXT, 0);
        assert!(key.verify_line(&zero, VECTOR_TEXT).is_err());
        for bad in [
            "",
            VECTOR_LINE,
            "old 5\n",
            "\u{2014} witness.example/w1 !!\n",
        ] {
            assert!(
                key.cosignatures_in_response(bad, VECTOR_TEXT).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn witness_keys_are_read_strictly() {
        WitnessKey::parse(VECTOR_VKEY).expect("the test's own input is valid");
        WitnessKey::parse(&format!("{VECTOR_VKEY}\n")).expect("the test's own input is valid");
        // The log's own key type (0x01) is not a cosigner key.
        let log_type = format!(
            "witness.example/w1+{:08x}+{}",
            super::super::checkpoint::note_key_id(
                "witness.example/w1",
                rfc8032_witness().verifying_key().as_bytes()
            ),
            BASE64.encode([&[0x01][..], rfc8032_witness().verifying_key().as_bytes()].concat())
        );
        for bad in [
            log_type.as_str(),
            "witness.example/w1+eb762cc3+BNdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea",
            "witness.example/w2+eb762cc2+BNdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea",
            "witness.example/w1+eb762cc2",
            "",
        ] {
            assert!(WitnessKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_bodies_and_size_answers_follow_the_protocol() {
        let note = format!("{VECTOR_TEXT}\n\u{2014} example.com/behind-the-sofa AAAA\n");
        let body = add_checkpoint_body(3, &[[0u8; 32], [1u8; 32]], &note);
        assert_eq!(
            body,
            format!(
                "old 3\n{}\n{}\n\n{note}",
                BASE64.encode([0u8; 32]),
                BASE64.encode([1u8; 32])
            )
        );
        assert_eq!(
            add_checkpoint_body(0, &[], &note),
            format!("old 0\n\n{note}")
        );
        assert_eq!(parse_size_response("42\n"), Some(42));
        assert_eq!(parse_size_response("0\n"), Some(0));
        for bad in ["42", "042\n", "-1\n", "\n", "4 2\n", "x\n"] {
            assert_eq!(parse_size_response(bad), None, "{bad:?}");
        }
        let appended = append_cosignature_lines(&note, &[VECTOR_LINE.to_string()]);
        assert_eq!(appended, format!("{note}{VECTOR_LINE}\n"));
        assert_eq!(
            append_cosignature_lines(&appended, &[VECTOR_LINE.to_string()]),
            appended
        );
    }
}
