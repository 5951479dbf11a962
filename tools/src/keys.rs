//! Payer and client keys as operators handle them: 32-byte ed25519 seeds in hex, inline or in a
//! file readable only by its owner.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use tollgate_engine::receipt::parse_hex;

/// A fresh key from the thread-local CSPRNG (ChaCha, seeded and reseeded from the OS).
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rng())
}

/// Reads a key given as 64 hex digits, or as the path of a file holding them.
pub fn load(key_or_path: &str) -> anyhow::Result<SigningKey> {
    let text = if Path::new(key_or_path).is_file() {
        std::fs::read_to_string(key_or_path)
            .with_context(|| format!("reading key file {key_or_path}"))?
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
