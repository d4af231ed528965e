//! Checkpoints: a signed tree head in the form other transparency-log tools read, a C2SP signed
//! note (c2sp.org/signed-note) whose text is a C2SP checkpoint (c2sp.org/tlog-checkpoint).
//!
//! ```text
//! audit.example.com/orders
//! 42
//! PAb5plclr2BSYfY2ZyyWINQJcx2JpFHXRV/pxK4WeCk=
//!
//! — audit.example.com/orders <base64 of the 4-byte key ID and the 64-byte Ed25519 signature>
//! ```
//!
//! The note text is the origin, the tree size in decimal and the standard base64 of the RFC 9162
//! root, each line ending in a newline; auditgate writes no extension lines, so the timestamp of
//! the JSON head is not part of a checkpoint. The key name is the origin (`[log] origin`, by
//! default the log id), the signature type is Ed25519 (0x01), and the key ID is the first four
//! bytes of SHA-256(key name || 0x0A || 0x01 || public key), as the signed-note spec recommends.
//! A verifier key (vkey) is `<key name>+<8 hex digits of the key ID>+<base64(0x01 || public
//! key)>`; `auditgate keygen` writes one beside the key file.
//!
//! A checkpoint is signed by the same Ed25519 key as the JSON head, over a text of exactly three
//! lines, which the five-line head text and the nine-line export manifest text can never equal.
//! Heads already stored keep their JSON form and signature; their checkpoint is made from them
//! (the size and root do not change), so every stored head has one.

use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::head::{HeadError, LogSigner, LogVerifier, TreeHead};
use super::merkle::Hash;

/// The signed-note signature type of Ed25519.
pub const SIGNATURE_TYPE_ED25519: u8 = 0x01;

/// The em dash and space that begin a signature line.
pub(super) const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// The most signature lines a note may carry before it is refused unread. The spec asks for at
/// least 16 to be accepted; witnesses cosigning a checkpoint stay well under this.
const MAX_SIGNATURES: usize = 100;

/// The longest note read: far more than 100 Ed25519 signatures and a long origin need, so that
/// a hostile note cannot make the reader hold much.
const MAX_NOTE_BYTES: usize = 64 * 1024;

/// The longest origin accepted, in bytes.
const MAX_ORIGIN_BYTES: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("invalid origin: {0}")]
    InvalidOrigin(&'static str),
    #[error("invalid verifier key: {0}")]
    InvalidVerifierKey(String),
    #[error("malformed note: {0}")]
    MalformedNote(String),
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
    #[error("the note has no signature by key {name}+{key_id:08x}")]
    NoSignatureByKey { name: String, key_id: u32 },
    #[error("the signature by key {name}+{key_id:08x} does not verify")]
    BadSignature { name: String, key_id: u32 },
    #[error(transparent)]
    Key(#[from] HeadError),
    #[error("{path}: {error}", path = .path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Checks that `origin` can be a checkpoint's first line and a signed note's key name: not
/// empty, no spaces (of any kind), no `+`, no control characters (so no newline).
pub fn validate_origin(origin: &str) -> Result<(), CheckpointError> {
    if origin.is_empty() {
        return Err(CheckpointError::InvalidOrigin("empty"));
    }
    if origin.len() > MAX_ORIGIN_BYTES {
        return Err(CheckpointError::InvalidOrigin("longer than 255 bytes"));
    }
    if origin.chars().any(char::is_whitespace) {
        return Err(CheckpointError::InvalidOrigin("contains a space"));
    }
    if origin.contains('+') {
        return Err(CheckpointError::InvalidOrigin("contains '+'"));
    }
    if origin.chars().any(char::is_control) {
        return Err(CheckpointError::InvalidOrigin(
            "contains a control character",
        ));
    }
    Ok(())
}

/// The signed-note key ID of an Ed25519 key: the first four bytes, big-endian, of
/// SHA-256(key name || 0x0A || 0x01 || 32-byte public key).
pub fn note_key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', SIGNATURE_TYPE_ED25519]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A log's size and root in checkpoint form, without the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root_hash: Hash,
    /// Lines after the root hash. auditgate writes none; a checkpoint read from elsewhere may
    /// carry them, and they are signed like the rest of the text.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The checkpoint of `head` under `origin`.
    pub fn of_head(origin: &str, head: &TreeHead) -> Result<Self, CheckpointError> {
        validate_origin(origin)?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size: head.size,
            root_hash: head.root_hash,
            extensions: Vec::new(),
        })
    }

    /// The note text that is signed: origin, size and base64 root, one a line, then any
    /// extension lines.
    pub fn text(&self) -> String {
        let mut text = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root_hash)
        );
        for line in &self.extensions {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// Reads a note text in the checkpoint form, strictly: the size in decimal without leading
    /// zeros, the root as canonical standard base64 of 32 bytes, no empty extension line.
    pub fn parse_text(text: &str) -> Result<Self, CheckpointError> {
        let malformed = |reason: &str| CheckpointError::MalformedCheckpoint(reason.to_string());
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| malformed("the text does not end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(malformed("the origin line is empty"));
        }
        let size_line = lines.next().ok_or_else(|| malformed("no tree size line"))?;
        let canonical_size =
            size_line == "0" || (!size_line.starts_with('0') && !size_line.is_empty());
        let size = size_line
            .parse::<u64>()
            .ok()
            .filter(|_| canonical_size && size_line.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                malformed("the tree size is not a decimal number without leading zeros")
            })?;
        let root_line = lines.next().ok_or_else(|| malformed("no root hash line"))?;
        let root_hash = BASE64
            .decode(root_line)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .filter(|root| BASE64.encode(root) == root_line)
            .ok_or_else(|| malformed("the root hash is not the standard base64 of 32 bytes"))?;
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(malformed("an extension line is empty"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root_hash,
            extensions,
        })
    }

    /// Whether this checkpoint states the size and root of `head`.
    pub fn matches_head(&self, head: &TreeHead) -> bool {
        self.size == head.size && self.root_hash == head.root_hash
    }
}

/// A signed-note verifier key for an Ed25519 key: the key name, its key ID and the public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    key: LogVerifier,
}

impl VerifierKey {
    /// The verifier key of `key` under the key name `name` (a checkpoint's origin).
    pub fn new(name: &str, key: &LogVerifier) -> Result<Self, CheckpointError> {
        validate_origin(name)?;
        Ok(VerifierKey {
            name: name.to_string(),
            key_id: note_key_id(name, &key.to_public_key_bytes()),
            key: key.clone(),
        })
    }

    /// Reads `<name>+<8 hex digits>+<base64(0x01 || 32-byte key)>`, and checks that the key ID
    /// is the one the name and key give.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let invalid = |reason: &str| CheckpointError::InvalidVerifierKey(reason.to_string());
        let text = text.trim_end_matches(['\n', '\r']);
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("expected NAME+KEYID+KEY"));
        };
        validate_origin(name)
            .map_err(|error| invalid(&format!("the key name is not valid: {error}")))?;
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("the key ID is not 8 hex digits"));
        }
        let key_id =
            u32::from_str_radix(id, 16).map_err(|_| invalid("the key ID is not 8 hex digits"))?;
        let bytes = BASE64
            .decode(key)
            .map_err(|_| invalid("the key is not standard base64"))?;
        let Some((&signature_type, public_key)) = bytes.split_first() else {
            return Err(invalid("the key is empty"));
        };
        if signature_type != SIGNATURE_TYPE_ED25519 {
            return Err(invalid(&format!(
                "signature type {signature_type:#04x} is not Ed25519 (0x01)"
            )));
        }
        let public_key =
            <[u8; 32]>::try_from(public_key).map_err(|_| invalid("an Ed25519 key is 32 bytes"))?;
        if note_key_id(name, &public_key) != key_id {
            return Err(invalid("the key ID does not match the key name and key"));
        }
        let key = LogVerifier::from_public_key_bytes(&public_key)
            .map_err(|error| invalid(&error.to_string()))?;
        Ok(VerifierKey {
            name: name.to_string(),
            key_id,
            key,
        })
    }

    /// Reads a `.vkey` file; errors name the path.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let text = fs::read_to_string(path).map_err(|error| CheckpointError::Io {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Checks that `note` carries a valid signature by this key, and returns its text.
    ///
    /// As the signed-note spec asks: signatures by other keys (another name or key ID) are
    /// ignored, a signature by this key that does not verify rejects the note, and a note with
    /// no signature by this key is rejected.
    pub fn open<'note>(&self, note: &'note str) -> Result<&'note str, CheckpointError> {
        let (text, signatures) = split_note(note)?;
        let mut verified = false;
        for line in signatures {
            let (name, key_id, signature) = parse_signature_line(line)?;
            if name != self.name || key_id != self.key_id {
                continue;
            }
            let signature =
                <[u8; 64]>::try_from(signature).map_err(|_| CheckpointError::BadSignature {
                    name: self.name.clone(),
                    key_id,
                })?;
            self.key
                .verify_checkpoint_text(text, &signature)
                .map_err(|_| CheckpointError::BadSignature {
                    name: self.name.clone(),
                    key_id,
                })?;
            verified = true;
        }
        if !verified {
            return Err(CheckpointError::NoSignatureByKey {
                name: self.name.clone(),
                key_id: self.key_id,
            });
        }
        Ok(text)
    }

    /// Checks `note`'s signature by this key ([`Self::open`]) and reads its text as a checkpoint.
    pub fn verify_checkpoint(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::parse_text(self.open(note)?)
    }
}

/// `<name>+<key ID as 8 lowercase hex digits>+<base64(0x01 || public key)>`.
impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = vec![SIGNATURE_TYPE_ED25519];
        key.extend_from_slice(&self.key.to_public_key_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64.encode(key)
        )
    }
}

/// Splits a signed note into its text (with the final newline) and its signature lines (without
/// theirs), checking the form the spec sets: UTF-8 (given), no control character but newline,
/// the text separated from the signatures by the last empty line, every signature line ending
/// in a newline.
pub(super) fn split_note(note: &str) -> Result<(&str, Vec<&str>), CheckpointError> {
    let malformed = |reason: &str| CheckpointError::MalformedNote(reason.to_string());
    if note.len() > MAX_NOTE_BYTES {
        return Err(malformed("longer than 64 KiB"));
    }
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(malformed("contains a control character"));
    }
    let separator = note
        .rfind("\n\n")
        .ok_or_else(|| malformed("no empty line before the signatures"))?;
    let text = &note[..separator + 1];
    let signatures = &note[separator + 2..];
    let Some(signatures) = signatures.strip_suffix('\n') else {
        return Err(malformed(
            "no signature line, or the last one does not end in a newline",
        ));
    };
    let lines: Vec<&str> = signatures.split('\n').collect();
    if lines.len() > MAX_SIGNATURES {
        return Err(malformed("more than 100 signatures"));
    }
    Ok((text, lines))
}

/// Reads `— <name> <base64(key ID || signature)>`.
pub(super) fn parse_signature_line(line: &str) -> Result<(&str, u32, Vec<u8>), CheckpointError> {
    let malformed = |reason: &str| CheckpointError::MalformedNote(reason.to_string());
    let rest = line
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or_else(|| malformed("a signature line does not begin with an em dash and a space"))?;
    let (name, encoded) = rest
        .split_once(' ')
        .ok_or_else(|| malformed("a signature line has no space after the key name"))?;
    if name.is_empty() || name.contains('+') || encoded.contains(char::is_whitespace) {
        return Err(malformed("a signature line's key name is not valid"));
    }
    let bytes = BASE64
        .decode(encoded)
        .map_err(|_| malformed("a signature is not standard base64"))?;
    if bytes.len() < 5 {
        return Err(malformed("a signature is shorter than its key ID"));
    }
    let key_id = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    Ok((name, key_id, bytes[4..].to_vec()))
}

/// A signed note of `text` by `signer` under the key name `name`.
fn sign_note(signer: &LogSigner, name: &str, text: &str) -> String {
    let key_id = note_key_id(name, &signer.public_key().to_public_key_bytes());
    let mut signature = key_id.to_be_bytes().to_vec();
    signature.extend_from_slice(&signer.sign_checkpoint_text(text));
    format!(
        "{text}\n{SIGNATURE_PREFIX}{name} {}\n",
        BASE64.encode(signature)
    )
}

impl LogSigner {
    /// `head` as a signed checkpoint under `origin` (the key name too). Ed25519 is
    /// deterministic, so the same head, origin and key always give the same note.
    pub fn sign_checkpoint(
        &self,
        origin: &str,
        head: &TreeHead,
    ) -> Result<String, CheckpointError> {
        let checkpoint = Checkpoint::of_head(origin, head)?;
        Ok(sign_note(self, origin, &checkpoint.text()))
    }

    /// This key's verifier key under the key name `origin`.
    pub fn verifier_key(&self, origin: &str) -> Result<VerifierKey, CheckpointError> {
        VerifierKey::new(origin, &self.public_key())
    }
}

/// Where [`write_new_key_files`] puts the verifier key: the private key's path with `.vkey`
/// appended (`data/log.key` -> `data/log.key.vkey`).
pub fn verifier_key_path(private_key_path: &Path) -> PathBuf {
    let mut path = private_key_path.as_os_str().to_owned();
    path.push(".vkey");
    PathBuf::from(path)
}

/// Key generation with the checkpoint verifier key: [`LogSigner::write_new`] (the private key and
/// the `.pub` file) plus `<path>.vkey`, one line holding the verifier key under `origin`. Refuses
/// to overwrite any of the three, and leaves none behind when it fails.
pub fn write_new_key_files(
    path: &Path,
    origin: &str,
) -> Result<(LogSigner, VerifierKey), CheckpointError> {
    validate_origin(origin)?;
    let vkey_path = verifier_key_path(path);
    // The .vkey file is claimed first, so that an existing one stops key generation before a
    // key is made; the key files are then made with their own refusal to overwrite.
    let mut vkey_file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&vkey_path)
        .map_err(|error| {
            if error.kind() == std::io::ErrorKind::AlreadyExists {
                CheckpointError::Key(HeadError::AlreadyExists {
                    path: vkey_path.clone(),
                })
            } else {
                CheckpointError::Io {
                    path: vkey_path.clone(),
                    error,
                }
            }
        })?;
    let signer = match LogSigner::write_new(path) {
        Ok(signer) => signer,
        Err(error) => {
            drop(vkey_file);
            let _ = fs::remove_file(&vkey_path);
            return Err(error.into());
        }
    };
    let vkey = signer.verifier_key(origin)?;
    let written = {
        use std::io::Write;
        vkey_file
            .write_all(format!("{vkey}\n").as_bytes())
            .and_then(|()| vkey_file.sync_all())
    };
    if let Err(error) = written {
        let _ = fs::remove_file(&vkey_path);
        let _ = fs::remove_file(path);
        let _ = fs::remove_file(super::head::public_key_path(path));
        return Err(CheckpointError::Io {
            path: vkey_path,
            error,
        });
    }
    Ok((signer, vkey))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::merkle::leaf_hash;
    use chrono::{TimeZone, Utc};

    /// The signing key of the Go note package's tests (golang.org/x/mod/sumdb/note), whose
    /// private key is `PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz`:
    /// base64 of 0x01 and the 32-byte Ed25519 seed.
    fn peter_neumann() -> LogSigner {
        let decoded = BASE64
            .decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
            .expect("the test's own input is valid");
        assert_eq!(decoded[0], SIGNATURE_TYPE_ED25519);
        let mut der =
            hex::decode("302e020100300506032b657004220420").expect("the test's own input is valid");
        der.extend_from_slice(&decoded[1..]);
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            BASE64.encode(&der)
        );
        LogSigner::from_pkcs8_pem(&pem).expect("the test's own input is valid")
    }

    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                              then you don't know what your problem is.\n";
    const PETER_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
        then you don't know what your problem is.\n\n\
        \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    fn head(size: u64) -> TreeHead {
        let time = Utc
            .timestamp_millis_opt(1_735_787_045_678)
            .single()
            .expect("the test's own input is valid");
        TreeHead::new("orders", size, leaf_hash(b"root"), time)
            .expect("the test's own input is valid")
    }

    /// The Go note package's vector: the same seed gives the same verifier key, key ID and
    /// signature line, byte for byte.
    #[test]
    fn go_note_vector_is_reproduced() {
        let signer = peter_neumann();
        let vkey = signer
            .verifier_key("PeterNeumann")
            .expect("the test's own input is valid");
        assert_eq!(vkey.to_string(), PETER_VKEY);
        assert_eq!(vkey.key_id(), 0xc74f20a3);
        assert_eq!(sign_note(&signer, "PeterNeumann", PETER_TEXT), PETER_NOTE);

        let parsed = VerifierKey::parse(PETER_VKEY).expect("the test's own input is valid");
        assert_eq!(parsed, vkey);
        assert_eq!(
            parsed
                .open(PETER_NOTE)
                .expect("the test's own input is valid"),
            PETER_TEXT
        );
        let changed = PETER_NOTE.replace("cryptography", "cryptographY");
        assert!(matches!(
            parsed.open(&changed),
            Err(CheckpointError::BadSignature { .. })
        ));
    }

    /// The example of the C2SP signed-note spec ("Verifier keys", "Example").
    #[test]
    fn c2sp_spec_example_verifies() {
        let vkey = VerifierKey::parse(
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        )
        .expect("the test's own input is valid");
        let note = "This is an example message.\n\n\u{2014} example.com/foo \
            Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
        assert_eq!(
            vkey.open(note).expect("the test's own input is valid"),
            "This is an example message.\n"
        );
        assert!(vkey
            .open(&note.replace("example message", "example massage"))
            .is_err());
    }

    #[test]
    fn checkpoint_text_is_origin_size_and_base64_root() {
        let checkpoint = Checkpoint::of_head("audit.example.com/orders", &head(42))
            .expect("the test's own input is valid");
        assert_eq!(
            checkpoint.text(),
            format!(
                "audit.example.com/orders\n42\n{}\n",
                BASE64.encode(leaf_hash(b"root"))
            )
        );
        assert_eq!(
            Checkpoint::parse_text(&checkpoint.text()).expect("the test's own input is valid"),
            checkpoint
        );
        assert!(checkpoint.matches_head(&head(42)));
        assert!(!checkpoint.matches_head(&head(43)));
    }

    #[test]
    fn signed_checkpoint_verifies_and_names_its_key() {
        let signer = LogSigner::generate();
        let note = signer
            .sign_checkpoint("orders", &head(7))
            .expect("the test's own input is valid");
        let vkey = signer
            .verifier_key("orders")
            .expect("the test's own input is valid");
        let id = note_key_id("orders", &signer.public_key().to_public_key_bytes());
        assert_eq!(vkey.key_id(), id);
        let signature_line = note.lines().last().expect("the test's own input is valid");
        let blob = BASE64
            .decode(
                signature_line
                    .strip_prefix("\u{2014} orders ")
                    .expect("the test's own input is valid"),
            )
            .expect("the test's own input is valid");
        assert_eq!(blob.len(), 4 + 64);
        assert_eq!(&blob[..4], &id.to_be_bytes());
        let checkpoint = vkey
            .verify_checkpoint(&note)
            .expect("the test's own input is valid");
        assert!(checkpoint.matches_head(&head(7)));
        assert_eq!(checkpoint.origin, "orders");
        // Deterministic: the same head gives the same note.
        assert_eq!(
            signer
                .sign_checkpoint("orders", &head(7))
                .expect("the test's own input is valid"),
            note
        );
    }

    #[test]
    fn tampered_checkpoints_are_rejected() {
        let signer = LogSigner::generate();
        let vkey = signer
            .verifier_key("orders")
            .expect("the test's own input is valid");
        let note = signer
            .sign_checkpoint("orders", &head(7))
            .expect("the test's own input is valid");
        let root = BASE64.encode(leaf_hash(b"root"));
        let other_root = BASE64.encode(leaf_hash(b"other"));
        let other_key = LogSigner::generate();

        let bad_size = note.replacen("\n7\n", "\n8\n", 1);
        assert!(matches!(
            vkey.verify_checkpoint(&bad_size),
            Err(CheckpointError::BadSignature { .. })
        ));
        let bad_root = note.replace(&root, &other_root);
        assert!(matches!(
            vkey.verify_checkpoint(&bad_root),
            Err(CheckpointError::BadSignature { .. })
        ));
        let by_other = other_key
            .sign_checkpoint("orders", &head(7))
            .expect("the test's own input is valid");
        assert!(matches!(
            vkey.verify_checkpoint(&by_other),
            Err(CheckpointError::NoSignatureByKey { .. })
        ));
        // Another key claiming this key's name and ID is checked, and fails.
        let other_signature = by_other
            .lines()
            .last()
            .expect("the test's own input is valid");
        let mut blob = BASE64
            .decode(
                other_signature
                    .strip_prefix("\u{2014} orders ")
                    .expect("the test's own input is valid"),
            )
            .expect("the test's own input is valid");
        blob[..4].copy_from_slice(&vkey.key_id().to_be_bytes());
        let forged = format!(
            "{}\n\u{2014} orders {}\n",
            Checkpoint::of_head("orders", &head(7))
                .expect("the test's own input is valid")
                .text(),
            BASE64.encode(&blob)
        );
        assert!(matches!(
            vkey.verify_checkpoint(&forged),
            Err(CheckpointError::BadSignature { .. })
        ));
        // A good signature beside a bad one by the same key rejects the note.
        let doubled = format!(
            "{note}{}\n",
            forged
                .lines()
                .last()
                .expect("the test's own input is valid")
        );
        assert!(vkey.verify_checkpoint(&doubled).is_err());
        // A cosignature by an unknown key is ignored.
        let cosigned = format!(
            "{note}{}\n",
            by_other
                .lines()
                .last()
                .expect("the test's own input is valid")
                .replace("orders", "witness.example")
        );
        assert!(vkey.verify_checkpoint(&cosigned).is_ok());
    }

    #[test]
    fn malformed_notes_are_refused() {
        let signer = LogSigner::generate();
        let vkey = signer
            .verifier_key("orders")
            .expect("the test's own input is valid");
        let note = signer
            .sign_checkpoint("orders", &head(7))
            .expect("the test's own input is valid");
        let cases = [
            note.trim_end().to_string(),
            note.replacen("\n\n", "\n", 1),
            note.replace('\u{2014}', "-"),
            note.replacen("\n7\n", "\n7\r\n", 1),
            format!("{note}\u{2014} orders !!!\n"),
            String::new(),
        ];
        for case in cases {
            assert!(vkey.verify_checkpoint(&case).is_err(), "{case:?}");
        }
        let many = format!("{note}{}", "\u{2014} x AAAAAAA=\n".repeat(MAX_SIGNATURES));
        assert!(matches!(
            vkey.verify_checkpoint(&many),
            Err(CheckpointError::MalformedNote(_))
        ));
    }

    #[test]
    fn checkpoint_texts_are_read_strictly() {
        let root = BASE64.encode([1u8; 32]);
        assert!(Checkpoint::parse_text(&format!("o\n0\n{root}\n")).is_ok());
        let with_extension = Checkpoint::parse_text(&format!("o\n1\n{root}\nextra\n"))
            .expect("the test's own input is valid");
        assert_eq!(with_extension.extensions, vec!["extra".to_string()]);
        assert_eq!(with_extension.text(), format!("o\n1\n{root}\nextra\n"));
        for bad in [
            format!("o\n01\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n1\n{root}"),
            format!("\n1\n{root}\n"),
            format!("o\n1\n{}\n", BASE64.encode([1u8; 31])),
            format!("o\n1\n{}\n", hex::encode([1u8; 32])),
            format!("o\n1\n{root}\n\n"),
            "o\n1\n".to_string(),
        ] {
            assert!(Checkpoint::parse_text(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn origins_that_cannot_be_key_names_are_refused() {
        for bad in ["", "a b", "a+b", "a\nb", "a\u{00a0}b", &"x".repeat(256)] {
            assert!(validate_origin(bad).is_err(), "{bad:?}");
            assert!(LogSigner::generate()
                .sign_checkpoint(bad, &head(1))
                .is_err());
        }
        validate_origin("audit.example.com/orders").expect("the test's own input is valid");
        validate_origin("orders-api_eu.1").expect("the test's own input is valid");
    }

    #[test]
    fn verifier_keys_are_read_strictly() {
        VerifierKey::parse(PETER_VKEY).expect("the test's own input is valid");
        VerifierKey::parse(&format!("{PETER_VKEY}\n")).expect("the test's own input is valid");
        for bad in [
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "Peter+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+Apc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3",
            "PeterNeumann",
            "",
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ] {
            assert!(VerifierKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// An independent implementation, the `signed_note` crate, reads our verifier key, computes
    /// the same key ID, and verifies our checkpoint; and we verify a note it signed.
    #[test]
    fn the_signed_note_crate_agrees() {
        use signed_note::{Note, Verifier as _, VerifierList};
        let signer = LogSigner::generate();
        let origin = "audit.example.com/orders";
        let vkey = signer
            .verifier_key(origin)
            .expect("the test's own input is valid");
        let theirs = signed_note::StandardVerifier::new(&vkey.to_string())
            .expect("the test's own input is valid");
        assert_eq!(theirs.key_id(), vkey.key_id());
        assert_eq!(
            signed_note::key_id(origin, &{
                let mut key = vec![SIGNATURE_TYPE_ED25519];
                key.extend_from_slice(&signer.public_key().to_public_key_bytes());
                key
            }),
            vkey.key_id()
        );
        let note = signer
            .sign_checkpoint(origin, &head(42))
            .expect("the test's own input is valid");
        let parsed = Note::from_bytes(note.as_bytes()).expect("the test's own input is valid");
        let verifiers = VerifierList::new(vec![Box::new(theirs)]);
        let (verified, _) = parsed
            .verify(&verifiers)
            .expect("the test's own input is valid");
        assert_eq!(verified.len(), 1);
        assert_eq!(
            parsed.text(),
            Checkpoint::of_head(origin, &head(42))
                .expect("the test's own input is valid")
                .text()
                .as_bytes()
        );

        let changed = note.replacen("\n42\n", "\n43\n", 1);
        let parsed = Note::from_bytes(changed.as_bytes()).expect("the test's own input is valid");
        assert!(parsed.verify(&verifiers).is_err());
    }
}
