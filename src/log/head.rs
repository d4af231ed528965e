//! Signed tree heads: a log's size and Merkle root at a moment, signed with the log's Ed25519 key.
//!
//! A head is what an operator publishes outside auditgate (a file, a URL) and what an auditor
//! later checks the log against: once a head is out of reach of whoever controls the store, no
//! entry it covers can be changed or removed without the change showing.
//!
//! # What is signed
//!
//! [`TreeHead::signing_bytes`] is a versioned UTF-8 text of five lines, each ending in `\n`:
//!
//! ```text
//! auditgate-tree-head-v1
//! {log_id}
//! {size, decimal}
//! {root hash, 64 lowercase hex digits}
//! {timestamp, integer milliseconds since the Unix epoch, UTC}
//! ```
//!
//! The log id may not be empty or contain control characters (so no newline), and every other
//! field has a fixed alphabet, so the text reads back one way only. The first line names the
//! format, so a signature over it can never be taken for a signature over anything else.
//!
//! # Published form
//!
//! A [`SignedTreeHead`] serializes to one JSON object, one per line in a heads file:
//!
//! ```text
//! {"logId":"orders","size":42,"rootHash":"<64 hex>","timestamp":"2025-01-02T03:04:05.678Z",
//!  "keyId":"<16 hex>","signature":"<standard base64 of 64 bytes>"}
//! ```
//!
//! The key id is the hex of the first 8 bytes of SHA-256 over the 32-byte public key. It only
//! tells a reader which key to try; the signature is what is checked.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Datelike, SecondsFormat, SubsecRound, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::merkle::{from_hex, to_hex, Hash};

/// The first line of the signed text; a new signed format gets a new version here.
const SIGNING_FORMAT: &str = "auditgate-tree-head-v1";

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("invalid log id: {0}")]
    InvalidLogId(&'static str),
    #[error("timestamp out of range")]
    TimestampOutOfRange,
    #[error("invalid private key: {0}")]
    InvalidPrivateKey(String),
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("{path}: {error}", path = .path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: {error}", path = .path.display())]
    KeyFile {
        path: PathBuf,
        error: Box<HeadError>,
    },
    #[error("{path} already exists", path = .path.display())]
    AlreadyExists { path: PathBuf },
    #[error("head is signed by key {found}, not by key {expected}")]
    WrongKey { expected: String, found: String },
    #[error("bad signature")]
    BadSignature,
}

/// A log's size and root hash at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    pub log_id: String,
    /// Number of entries covered: the tree of leaves `[0, size)`.
    pub size: u64,
    /// RFC 9162 MTH of those entries.
    pub root_hash: Hash,
    /// When the head was made; millisecond precision is what is signed and published.
    pub timestamp: DateTime<Utc>,
}

impl TreeHead {
    /// A validated head, with the timestamp truncated to the milliseconds that get signed.
    pub fn new(
        log_id: impl Into<String>,
        size: u64,
        root_hash: Hash,
        timestamp: DateTime<Utc>,
    ) -> Result<Self, HeadError> {
        let head = TreeHead {
            log_id: log_id.into(),
            size,
            root_hash,
            timestamp: timestamp.trunc_subsecs(3),
        };
        head.validate()?;
        Ok(head)
    }

    /// Checks what the signed and the JSON form need: a log id that keeps the signed text
    /// unambiguous, and a timestamp RFC 3339 can write with a four-digit year.
    pub fn validate(&self) -> Result<(), HeadError> {
        validate_log_id(&self.log_id)?;
        if !(0..=9999).contains(&self.timestamp.year()) {
            return Err(HeadError::TimestampOutOfRange);
        }
        Ok(())
    }

    /// The exact bytes that are signed; see the module documentation for the format. Sub-
    /// millisecond precision in `timestamp` is not part of it.
    pub fn signing_bytes(&self) -> Vec<u8> {
        format!(
            "{SIGNING_FORMAT}\n{}\n{}\n{}\n{}\n",
            self.log_id,
            self.size,
            to_hex(&self.root_hash),
            self.timestamp.timestamp_millis()
        )
        .into_bytes()
    }
}

fn validate_log_id(log_id: &str) -> Result<(), HeadError> {
    if log_id.is_empty() {
        return Err(HeadError::InvalidLogId("empty"));
    }
    if log_id.chars().any(char::is_control) {
        return Err(HeadError::InvalidLogId("contains a control character"));
    }
    Ok(())
}

/// A tree head with the log key's signature over its [`TreeHead::signing_bytes`].
///
/// Serializes to and from the published JSON form described in the module documentation;
/// deserializing checks the form strictly (no unknown fields, canonical timestamp), but only
/// [`LogVerifier::verify`] checks the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SignedTreeHeadJson", try_from = "SignedTreeHeadJson")]
pub struct SignedTreeHead {
    pub head: TreeHead,
    /// Hex of the first 8 bytes of SHA-256 over the signing public key.
    pub key_id: String,
    pub signature: [u8; 64],
}

/// The JSON shape of a [`SignedTreeHead`]; field order here is the order in the output.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SignedTreeHeadJson {
    log_id: String,
    size: u64,
    root_hash: String,
    timestamp: String,
    key_id: String,
    signature: String,
}

impl From<SignedTreeHead> for SignedTreeHeadJson {
    fn from(signed: SignedTreeHead) -> Self {
        SignedTreeHeadJson {
            log_id: signed.head.log_id,
            size: signed.head.size,
            root_hash: to_hex(&signed.head.root_hash),
            timestamp: format_timestamp(&signed.head.timestamp),
            key_id: signed.key_id,
            signature: BASE64.encode(signed.signature),
        }
    }
}

impl TryFrom<SignedTreeHeadJson> for SignedTreeHead {
    type Error = HeadError;

    fn try_from(json: SignedTreeHeadJson) -> Result<Self, HeadError> {
        let root_hash = from_hex(&json.root_hash).ok_or_else(|| HeadError::InvalidField {
            field: "rootHash",
            reason: "expected 64 hex digits".into(),
        })?;
        let timestamp = parse_timestamp(&json.timestamp)?;
        if !is_key_id(&json.key_id) {
            return Err(HeadError::InvalidField {
                field: "keyId",
                reason: "expected 16 lowercase hex digits".into(),
            });
        }
        let signature = BASE64
            .decode(&json.signature)
            .ok()
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .ok_or_else(|| HeadError::InvalidField {
                field: "signature",
                reason: "expected standard base64 of 64 bytes".into(),
            })?;
        let head = TreeHead {
            log_id: json.log_id,
            size: json.size,
            root_hash,
            timestamp,
        };
        head.validate()?;
        Ok(SignedTreeHead {
            head,
            key_id: json.key_id,
            signature,
        })
    }
}

/// RFC 3339 in UTC with milliseconds and `Z`: `2025-01-02T03:04:05.678Z`.
fn format_timestamp(timestamp: &DateTime<Utc>) -> String {
    timestamp.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Accepts only the form [`format_timestamp`] writes, so that a published head has one spelling.
fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, HeadError> {
    let invalid = || HeadError::InvalidField {
        field: "timestamp",
        reason: "expected RFC 3339 UTC with milliseconds, like 2025-01-02T03:04:05.678Z".into(),
    };
    let timestamp = DateTime::parse_from_rfc3339(text)
        .map_err(|_| invalid())?
        .with_timezone(&Utc);
    if format_timestamp(&timestamp) != text {
        return Err(invalid());
    }
    Ok(timestamp)
}

fn is_key_id(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn key_id_of(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Where [`LogSigner::write_new`] puts the public key: the private key's path with `.pub`
/// appended (`data/log.key` -> `data/log.key.pub`).
pub fn public_key_path(private_key_path: &Path) -> PathBuf {
    let mut path = private_key_path.as_os_str().to_owned();
    path.push(".pub");
    PathBuf::from(path)
}

/// The log's private signing key.
pub struct LogSigner {
    key: SigningKey,
}

/// Shows the key id only, so that a signer can be logged without leaking the key.
impl fmt::Debug for LogSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSigner")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl LogSigner {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        LogSigner {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// Reads a `-----BEGIN PRIVATE KEY-----` PKCS#8 PEM (as written by [`Self::to_pkcs8_pem`] or
    /// `openssl genpkey -algorithm ed25519`).
    pub fn from_pkcs8_pem(text: &str) -> Result<Self, HeadError> {
        let key = SigningKey::from_pkcs8_pem(text)
            .map_err(|error| HeadError::InvalidPrivateKey(error.to_string()))?;
        Ok(LogSigner { key })
    }

    /// The key as PKCS#8 PEM. This holds the secret: write it to a private file and drop it.
    ///
    /// Written as PKCS#8 v1 (RFC 8410: the seed only, no public key), the form `openssl genpkey`
    /// writes. ed25519-dalek's own encoding is v2, which OpenSSL 3.0 cannot read, and operators
    /// will reach for `openssl pkey` to inspect a key.
    pub fn to_pkcs8_pem(&self) -> Result<String, HeadError> {
        let seed_only = KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        let pem = seed_only
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|error| HeadError::InvalidPrivateKey(error.to_string()))?;
        Ok(pem.as_str().to_owned())
    }

    /// Reads the key file at `path`; errors name the path.
    pub fn load(path: &Path) -> Result<Self, HeadError> {
        let text = read_key_file(path)?;
        Self::from_pkcs8_pem(&text).map_err(|error| HeadError::KeyFile {
            path: path.to_owned(),
            error: Box::new(error),
        })
    }

    /// Key generation: writes a new private key to `path` (PKCS#8 PEM, mode 0600) and its
    /// public key to [`public_key_path`]`(path)` (SPKI PEM). Refuses to overwrite either file,
    /// since losing a log key makes every head it signed unverifiable by new readers.
    pub fn write_new(path: &Path) -> Result<LogSigner, HeadError> {
        let signer = LogSigner::generate();
        let private_pem = signer.to_pkcs8_pem()?;
        let public_pem = signer.public_key().to_public_pem()?;
        let public_path = public_key_path(path);

        // Both files are created before either is written, so that an existing file of either
        // name stops key generation with nothing left behind.
        let mut private_file = create_new_file(path, 0o600)?;
        let mut public_file = match create_new_file(&public_path, 0o644) {
            Ok(file) => file,
            Err(error) => {
                drop(private_file);
                let _ = fs::remove_file(path);
                return Err(error);
            }
        };
        let written = write_synced(&mut private_file, path, &private_pem)
            .and_then(|()| write_synced(&mut public_file, &public_path, &public_pem));
        if let Err(error) = written {
            let _ = fs::remove_file(path);
            let _ = fs::remove_file(&public_path);
            return Err(error);
        }
        Ok(signer)
    }

    pub fn public_key(&self) -> LogVerifier {
        LogVerifier {
            key: self.key.verifying_key(),
        }
    }

    pub fn key_id(&self) -> String {
        key_id_of(&self.key.verifying_key())
    }

    /// Signs `head`, after validating it and truncating its timestamp to milliseconds so that
    /// the returned head is exactly what the signature covers.
    pub fn sign(&self, mut head: TreeHead) -> Result<SignedTreeHead, HeadError> {
        head.timestamp = head.timestamp.trunc_subsecs(3);
        head.validate()?;
        let signature = self.key.sign(&head.signing_bytes());
        Ok(SignedTreeHead {
            head,
            key_id: self.key_id(),
            signature: signature.to_bytes(),
        })
    }

    /// Signs the text of a checkpoint note ([`super::checkpoint`]). That text is exactly three
    /// lines (origin, size, base64 root), while a head's and an export manifest's texts have five
    /// and more, so a signature over one can never be taken for one over another.
    pub(super) fn sign_checkpoint_text(&self, text: &str) -> [u8; 64] {
        self.key.sign(text.as_bytes()).to_bytes()
    }

    /// Signs an export manifest's text ([`crate::export::proofs::ExportManifest::signing_bytes`]).
    /// That text begins with its own format line, `auditgate-export-v1`, so a signature over it
    /// can never be taken for one over a head (whose text begins `auditgate-tree-head-v1`).
    pub fn sign_export_manifest(&self, signing_bytes: &[u8]) -> [u8; 64] {
        self.key.sign(signing_bytes).to_bytes()
    }
}

/// A log's public key, which checks its signed heads.
#[derive(Clone, PartialEq, Eq)]
pub struct LogVerifier {
    key: VerifyingKey,
}

impl fmt::Debug for LogVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogVerifier")
            .field("key_id", &self.key_id())
            .finish()
    }
}

impl LogVerifier {
    /// Reads a `-----BEGIN PUBLIC KEY-----` SPKI PEM. Weak (small-order) keys are refused: any
    /// signature would verify under them.
    pub fn from_public_pem(text: &str) -> Result<Self, HeadError> {
        let key = VerifyingKey::from_public_key_pem(text)
            .map_err(|error| HeadError::InvalidPublicKey(error.to_string()))?;
        if key.is_weak() {
            return Err(HeadError::InvalidPublicKey("weak key".into()));
        }
        Ok(LogVerifier { key })
    }

    /// Reads the public key file at `path`; errors name the path.
    pub fn load(path: &Path) -> Result<Self, HeadError> {
        let text = read_key_file(path)?;
        Self::from_public_pem(&text).map_err(|error| HeadError::KeyFile {
            path: path.to_owned(),
            error: Box::new(error),
        })
    }

    pub fn to_public_pem(&self) -> Result<String, HeadError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|error| HeadError::InvalidPublicKey(error.to_string()))
    }

    /// Hex of the first 8 bytes of SHA-256 over the 32-byte public key.
    pub fn key_id(&self) -> String {
        key_id_of(&self.key)
    }

    /// Checks that `signed` is a valid head signed by this key. Uses strict verification, which
    /// also refuses non-canonical signature encodings, so a head has one valid signature.
    pub fn verify(&self, signed: &SignedTreeHead) -> Result<(), HeadError> {
        signed.head.validate()?;
        let expected = self.key_id();
        if signed.key_id != expected {
            return Err(HeadError::WrongKey {
                expected,
                found: signed.key_id.clone(),
            });
        }
        let signature = Signature::from_bytes(&signed.signature);
        self.key
            .verify_strict(&signed.head.signing_bytes(), &signature)
            .map_err(|_| HeadError::BadSignature)
    }

    /// The key from its 32-byte RFC 8032 encoding (as in a C2SP verifier key); weak keys are
    /// refused, as in [`Self::from_public_pem`].
    pub fn from_public_key_bytes(bytes: &[u8; 32]) -> Result<Self, HeadError> {
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|error| HeadError::InvalidPublicKey(error.to_string()))?;
        if key.is_weak() {
            return Err(HeadError::InvalidPublicKey("weak key".into()));
        }
        Ok(LogVerifier { key })
    }

    /// The 32-byte RFC 8032 encoding of the key.
    pub fn to_public_key_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Checks a signature made by [`LogSigner::sign_checkpoint_text`], strictly.
    pub(super) fn verify_checkpoint_text(
        &self,
        text: &str,
        signature: &[u8; 64],
    ) -> Result<(), HeadError> {
        self.key
            .verify_strict(text.as_bytes(), &Signature::from_bytes(signature))
            .map_err(|_| HeadError::BadSignature)
    }

    /// Checks a signature made by [`LogSigner::sign_export_manifest`].
    pub fn verify_export_manifest(
        &self,
        signing_bytes: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), HeadError> {
        self.key
            .verify_strict(signing_bytes, &Signature::from_bytes(signature))
            .map_err(|_| HeadError::BadSignature)
    }
}

fn read_key_file(path: &Path) -> Result<String, HeadError> {
    fs::read_to_string(path).map_err(|error| HeadError::Io {
        path: path.to_owned(),
        error,
    })
}

/// Creates `path`, failing if it exists. `mode` applies on Unix (less the umask).
fn create_new_file(path: &Path, mode: u32) -> Result<File, HeadError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path).map_err(|error| {
        if error.kind() == io::ErrorKind::AlreadyExists {
            HeadError::AlreadyExists {
                path: path.to_owned(),
            }
        } else {
            HeadError::Io {
                path: path.to_owned(),
                error,
            }
        }
    })
}

fn write_synced(file: &mut File, path: &Path, text: &str) -> Result<(), HeadError> {
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| HeadError::Io {
            path: path.to_owned(),
            error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::merkle::leaf_hash;
    use chrono::TimeZone;

    /// A fixed key, so that signatures (deterministic in Ed25519) can be compared to constants.
    fn fixed_signer() -> LogSigner {
        LogSigner {
            key: SigningKey::from_bytes(&[7u8; 32]),
        }
    }

    fn fixed_time() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_735_787_045_678)
            .single()
            .unwrap()
    }

    fn sample_head() -> TreeHead {
        TreeHead::new("orders", 42, leaf_hash(b"root"), fixed_time()).unwrap()
    }

    /// A directory under the system temp dir, unique to this test and process, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "auditgate-head-{name}-{}-{}",
                std::process::id(),
                Utc::now().timestamp_nanos_opt().unwrap_or_default()
            ));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn signing_bytes_are_the_documented_text() {
        let head = sample_head();
        let expected = format!(
            "auditgate-tree-head-v1\norders\n42\n{}\n1735787045678\n",
            to_hex(&leaf_hash(b"root"))
        );
        assert_eq!(head.signing_bytes(), expected.into_bytes());
    }

    #[test]
    fn log_ids_that_would_make_the_signed_text_ambiguous_are_refused() {
        for bad in ["", "a\nb", "a\rb", "tab\there", "nul\0"] {
            let result = TreeHead::new(bad, 1, [0; 32], fixed_time());
            assert!(matches!(result, Err(HeadError::InvalidLogId(_))), "{bad:?}");
        }
        assert!(TreeHead::new("orders-api/eu café", 1, [0; 32], fixed_time()).is_ok());

        // A head built field by field is checked when signed and when verified.
        let signer = fixed_signer();
        let mut head = sample_head();
        head.log_id = "a\nb".into();
        assert!(matches!(
            signer.sign(head.clone()),
            Err(HeadError::InvalidLogId(_))
        ));
        let mut signed = signer.sign(sample_head()).unwrap();
        signed.head = head;
        assert!(matches!(
            signer.public_key().verify(&signed),
            Err(HeadError::InvalidLogId(_))
        ));
    }

    #[test]
    fn timestamps_are_kept_to_the_millisecond() {
        let precise = fixed_time() + chrono::Duration::nanoseconds(123_456);
        let head = TreeHead::new("orders", 1, [0; 32], precise).unwrap();
        assert_eq!(head.timestamp, fixed_time());

        let mut unrounded = head.clone();
        unrounded.timestamp = precise;
        let signed = fixed_signer().sign(unrounded).unwrap();
        assert_eq!(signed.head.timestamp, fixed_time());

        let far_future = Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).single().unwrap();
        assert!(matches!(
            TreeHead::new("orders", 1, [0; 32], far_future),
            Err(HeadError::TimestampOutOfRange)
        ));
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let signer = LogSigner::generate();
        let verifier = signer.public_key();
        let signed = signer.sign(sample_head()).unwrap();
        assert_eq!(signed.head, sample_head());
        assert_eq!(signed.key_id, signer.key_id());
        verifier.verify(&signed).unwrap();
    }

    #[test]
    fn any_change_to_a_signed_head_is_rejected() {
        let signer = fixed_signer();
        let verifier = signer.public_key();
        let signed = signer.sign(sample_head()).unwrap();

        let mut changes: Vec<(&str, SignedTreeHead)> = Vec::new();
        let mut changed = signed.clone();
        changed.head.size += 1;
        changes.push(("size", changed));
        let mut changed = signed.clone();
        changed.head.root_hash[31] ^= 1;
        changes.push(("root", changed));
        let mut changed = signed.clone();
        changed.head.timestamp += chrono::Duration::milliseconds(1);
        changes.push(("timestamp", changed));
        let mut changed = signed.clone();
        changed.head.log_id = "orderz".into();
        changes.push(("log id", changed));
        for byte in [0, 31, 32, 63] {
            let mut changed = signed.clone();
            changed.signature[byte] ^= 0x40;
            changes.push(("signature", changed));
        }
        for (what, changed) in changes {
            assert!(
                matches!(verifier.verify(&changed), Err(HeadError::BadSignature)),
                "changed {what} was accepted"
            );
        }
        verifier.verify(&signed).unwrap();
    }

    #[test]
    fn a_head_signed_by_another_key_is_rejected() {
        let signer = fixed_signer();
        let other = LogSigner::generate();
        let signed_by_other = other.sign(sample_head()).unwrap();
        let verifier = signer.public_key();

        let error = verifier.verify(&signed_by_other).unwrap_err();
        assert!(matches!(error, HeadError::WrongKey { .. }), "{error}");
        assert_eq!(
            error.to_string(),
            format!(
                "head is signed by key {}, not by key {}",
                other.key_id(),
                signer.key_id()
            )
        );

        // Claiming the right key id does not help.
        let mut forged = signed_by_other;
        forged.key_id = signer.key_id();
        assert!(matches!(
            verifier.verify(&forged),
            Err(HeadError::BadSignature)
        ));
    }

    #[test]
    fn key_id_is_a_sha256_prefix_of_the_public_key() {
        let signer = fixed_signer();
        let public = signer.key.verifying_key().to_bytes();
        let digest = Sha256::digest(public);
        assert_eq!(signer.key_id(), hex::encode(&digest[..8]));
        assert_eq!(signer.public_key().key_id(), signer.key_id());
        assert!(is_key_id(&signer.key_id()));
        assert_ne!(LogSigner::generate().key_id(), signer.key_id());
    }

    #[test]
    fn pem_round_trips() {
        let signer = LogSigner::generate();
        let private_pem = signer.to_pkcs8_pem().unwrap();
        assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let reread = LogSigner::from_pkcs8_pem(&private_pem).unwrap();
        assert_eq!(reread.key_id(), signer.key_id());
        // Ed25519 is deterministic: the same key gives the same signature.
        assert_eq!(
            reread.sign(sample_head()).unwrap(),
            signer.sign(sample_head()).unwrap()
        );

        let public_pem = signer.public_key().to_public_pem().unwrap();
        assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let verifier = LogVerifier::from_public_pem(&public_pem).unwrap();
        assert_eq!(verifier, signer.public_key());
        verifier
            .verify(&signer.sign(sample_head()).unwrap())
            .unwrap();
    }

    #[test]
    fn private_keys_use_the_pkcs8_form_openssl_writes() {
        // The RFC 8410 PKCS#8 v1 form `openssl genpkey -algorithm ed25519` writes: a fixed prefix,
        // then the 32-byte seed.
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend_from_slice(&[7u8; 32]);
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            BASE64.encode(&der)
        );
        assert_eq!(fixed_signer().to_pkcs8_pem().unwrap(), pem);
        let signer = LogSigner::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(signer.key_id(), fixed_signer().key_id());

        // The v2 form (with the public key) is read too, as long as the two halves agree.
        let v2 = fixed_signer()
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
            .to_string();
        assert_eq!(
            LogSigner::from_pkcs8_pem(&v2).unwrap().key_id(),
            fixed_signer().key_id()
        );
        let mismatched = KeypairBytes {
            secret_key: [7u8; 32],
            public_key: Some(ed25519_dalek::pkcs8::PublicKeyBytes(
                LogSigner::generate().key.verifying_key().to_bytes(),
            )),
        }
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
        assert!(matches!(
            LogSigner::from_pkcs8_pem(&mismatched),
            Err(HeadError::InvalidPrivateKey(_))
        ));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let signer = LogSigner::generate();
        let public_pem = signer.public_key().to_public_pem().unwrap();
        let private_pem = signer.to_pkcs8_pem().unwrap();
        assert!(matches!(
            LogSigner::from_pkcs8_pem(&public_pem),
            Err(HeadError::InvalidPrivateKey(_))
        ));
        assert!(matches!(
            LogVerifier::from_public_pem(&private_pem),
            Err(HeadError::InvalidPublicKey(_))
        ));
        assert!(LogSigner::from_pkcs8_pem("not a key").is_err());
        assert!(LogVerifier::from_public_pem("").is_err());

        // The identity point is a small-order ("weak") key under which signatures prove nothing.
        let mut spki = hex::decode("302a300506032b6570032100").unwrap();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        spki.extend_from_slice(&identity);
        let weak_pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            BASE64.encode(&spki)
        );
        let error = LogVerifier::from_public_pem(&weak_pem).unwrap_err();
        assert_eq!(error.to_string(), "invalid public key: weak key");
    }

    #[test]
    fn write_new_writes_a_private_file_and_a_public_file() {
        let dir = TempDir::new("write");
        let path = dir.0.join("log.key");
        let signer = LogSigner::write_new(&path).unwrap();

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "private key mode {mode:o}");
        }
        let loaded = LogSigner::load(&path).unwrap();
        assert_eq!(loaded.key_id(), signer.key_id());
        let public_path = dir.0.join("log.key.pub");
        assert_eq!(public_key_path(&path), public_path);
        let verifier = LogVerifier::load(&public_path).unwrap();
        verifier
            .verify(&loaded.sign(sample_head()).unwrap())
            .unwrap();
    }

    #[test]
    fn write_new_refuses_to_overwrite() {
        let dir = TempDir::new("overwrite");
        let path = dir.0.join("log.key");
        let first = LogSigner::write_new(&path).unwrap();
        let before = fs::read_to_string(&path).unwrap();

        let error = LogSigner::write_new(&path).unwrap_err();
        assert!(matches!(error, HeadError::AlreadyExists { .. }), "{error}");
        assert_eq!(
            error.to_string(),
            format!("{} already exists", path.display())
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), before);
        assert_eq!(LogSigner::load(&path).unwrap().key_id(), first.key_id());

        // A stale public key alone also stops key generation, and no private key is left behind.
        let other = dir.0.join("other.key");
        fs::write(public_key_path(&other), "stale").unwrap();
        assert!(matches!(
            LogSigner::write_new(&other),
            Err(HeadError::AlreadyExists { .. })
        ));
        assert!(!other.exists());
        assert_eq!(
            fs::read_to_string(public_key_path(&other)).unwrap(),
            "stale"
        );
    }

    #[test]
    fn load_errors_name_the_path() {
        let dir = TempDir::new("load");
        let missing = dir.0.join("missing.key");
        let error = LogSigner::load(&missing).unwrap_err();
        assert!(matches!(error, HeadError::Io { .. }));
        assert!(error
            .to_string()
            .starts_with(&missing.display().to_string()));

        let garbage = dir.0.join("garbage.pub");
        fs::write(&garbage, "garbage").unwrap();
        let error = LogVerifier::load(&garbage).unwrap_err();
        assert!(matches!(error, HeadError::KeyFile { .. }));
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}: invalid public key", garbage.display())),
            "{error}"
        );
    }

    /// The published form, pinned: a change here breaks every heads file already written. The
    /// signature was cross-checked with `openssl pkeyutl -sign -rawin` over the documented
    /// signing text with the same seed, and the key id with `openssl pkey -pubout`.
    #[test]
    fn json_has_the_published_shape() {
        let signed = fixed_signer().sign(sample_head()).unwrap();
        let json = serde_json::to_string(&signed).unwrap();
        let expected = concat!(
            r#"{"logId":"orders","size":42,"#,
            r#""rootHash":"3c06f9a65725af605261f636672c9620d409731d89a451d7455fe9c4ae167829","#,
            r#""timestamp":"2025-01-02T03:04:05.678Z","keyId":"fe812c12f3ab4ce6","#,
            r#""signature":"aVCdlyCTe5n613YKNWy2eWZ8QANJz+nTgyjWrWDPMOIPAtyYLsz3N6UZKxNJlXt/"#,
            r#"WrkwCIpxfNs21ZHVf/n3Dw=="}"#
        );
        assert_eq!(json, expected);

        let parsed: SignedTreeHead = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, signed);
        fixed_signer().public_key().verify(&parsed).unwrap();
    }

    #[test]
    fn json_that_is_not_in_the_published_form_is_refused() {
        let signed = fixed_signer().sign(sample_head()).unwrap();
        let good: serde_json::Value = serde_json::to_value(&signed).unwrap();
        let with = |field: &str, value: serde_json::Value| {
            let mut changed = good.clone();
            changed[field] = value;
            serde_json::from_value::<SignedTreeHead>(changed)
        };
        let cases = [
            ("rootHash", serde_json::json!("abcd")),
            ("rootHash", serde_json::json!("z".repeat(64))),
            (
                "timestamp",
                serde_json::json!("2025-01-02T03:04:05.678+00:00"),
            ),
            ("timestamp", serde_json::json!("2025-01-02T03:04:05Z")),
            (
                "timestamp",
                serde_json::json!("2025-01-02T03:04:05.678123Z"),
            ),
            ("timestamp", serde_json::json!("yesterday")),
            ("keyId", serde_json::json!("ABCDEF0123456789")),
            ("keyId", serde_json::json!("abc")),
            ("signature", serde_json::json!(BASE64.encode([0u8; 63]))),
            ("signature", serde_json::json!("not base64!")),
            ("logId", serde_json::json!("a\nb")),
            ("logId", serde_json::json!("")),
            ("size", serde_json::json!(-1)),
            ("extra", serde_json::json!(1)),
        ];
        for (field, value) in cases {
            assert!(
                with(field, value.clone()).is_err(),
                "{field} = {value} was accepted"
            );
        }
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("keyId");
        assert!(serde_json::from_value::<SignedTreeHead>(missing).is_err());
        assert!(serde_json::from_value::<SignedTreeHead>(good).is_ok());
    }
}
