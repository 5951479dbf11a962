//! Payer and client keys as operators handle them: 32-byte ed25519 seeds in hex, inline or in a
//! file readable only by its owner.

use std::io::Write;
use std::path::Path;

use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tollgate_engine::receipt::parse_hex;
use tollgate_settle::chain::load_signer;
use tollgate_settle::devchain::{ANVIL_CHAIN_ID, ANVIL_FIRST_DEV_KEY};

/// What `Debug` and `--print-config` show instead of a secret.
pub const MASK: &str = "********";

/// A secret as an operator gives it (a key in hex, or the path of a file holding it). `Debug`
/// shows [`MASK`], so no log line, panic or `{:?}` of a configuration can carry the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that turns it into a key.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it names a file rather than holding the secret inline.
    pub fn is_file(&self) -> bool {
        Path::new(&self.0).is_file()
    }

    /// The secret: the file's contents, trimmed, when it names a file, else the text given.
    pub fn read(&self) -> std::io::Result<String> {
        if self.is_file() {
            Ok(std::fs::read_to_string(&self.0)?.trim().to_owned())
        } else {
            Ok(self.0.clone())
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Secret(text.to_owned())
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(text.into())
    }
}

/// A fresh key from the thread-local CSPRNG (ChaCha, seeded and reseeded from the OS).
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rng())
}

/// Reads a key given as 64 hex digits, or as the path of a file holding them.
pub fn load(key_or_path: &str) -> anyhow::Result<SigningKey> {
    let path = Path::new(key_or_path);
    let text = if path.is_file() {
        tollgate_settle::chain::read_key_file(path)?
    } else {
        key_or_path.to_owned()
    };
    let seed = parse_hex::<32>(text.trim()).context("a key is 32 bytes of hex (64 digits)")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes the secret seed as hex to a new file with mode 0600. Refuses to overwrite: losing a
/// payer key loses the ability to sign for its deposit.
pub fn write_new(path: &Path, key: &SigningKey) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "{} already exists; refusing to overwrite a key",
            path.display()
        );
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{}", hex::encode(key.to_bytes()))?;
    file.sync_all()?;
    Ok(())
}

/// The key given as `flag`, or anvil's first dev account on anvil only (said on stderr).
pub fn dev_chain_signer(
    key: Option<&str>,
    chain_id: u64,
    flag: &str,
) -> anyhow::Result<PrivateKeySigner> {
    match key {
        Some(key) => Ok(load_signer(key)?),
        None if chain_id == ANVIL_CHAIN_ID => {
            let signer = load_signer(ANVIL_FIRST_DEV_KEY)?;
            eprintln!(
                "tollgate: no {flag} given: using anvil's first dev account {:#x} (chain {ANVIL_CHAIN_ID} only)",
                signer.address()
            );
            Ok(signer)
        }
        None => bail!("chain {chain_id} is not anvil: pass {flag}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_key_loads_back_and_is_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("payer.key");
        let key = generate();
        write_new(&path, &key).expect("write");
        let path_text = path.to_str().expect("utf-8 path");
        assert_eq!(load(path_text).expect("load").to_bytes(), key.to_bytes());
        assert!(write_new(&path, &generate()).is_err());
        assert_eq!(
            load(&hex::encode(key.to_bytes()))
                .expect("inline hex")
                .to_bytes(),
            key.to_bytes()
        );
        assert!(load("abcd").is_err());
    }
}
