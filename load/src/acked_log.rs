//! `--acked-log FILE`: one JSON line per acked receipt (payer, payee, nonce, amount, verdict), for
//! audits and crash tests that must know exactly what the engine promised.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tollgate_engine::{PayerKey, Verdict};

use super::stats::{Sent, verdict_name};

/// Appends acked receipts to a file. Shared by every connection; one lock per batch.
#[derive(Debug)]
pub struct AckedLog {
    file: Mutex<BufWriter<File>>,
    payers: Arc<[PayerKey]>,
}

impl AckedLog {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path, payers: Arc<[PayerKey]>) -> io::Result<Self> {
        Ok(Self {
            file: Mutex::new(BufWriter::new(File::create(path)?)),
            payers,
        })
    }

    /// Writes one line per receipt of an acked batch.
    pub fn write_batch(&self, sent: &[Sent], verdicts: &[Verdict]) -> io::Result<()> {
        // A panic while holding the lock leaves at worst a torn line; keep writing.
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (receipt, &verdict) in sent.iter().zip(verdicts) {
            let payer = self
                .payers
                .get(receipt.payer_index as usize)
                .copied()
                .unwrap_or(PayerKey([0; 32]));
            writeln!(
                file,
                r#"{{"payer":"{}","payee":"{}","nonce":{},"amount":{},"verdict":"{}"}}"#,
                payer,
                receipt.payee,
                receipt.nonce,
                receipt.amount,
                verdict_name(verdict)
            )?;
        }
        Ok(())
    }

    /// Flushes everything written so far to the file.
    pub fn flush(&self) -> io::Result<()> {
        self.file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Kind;
    use tollgate_engine::{Address, Reason};

    #[test]
    fn one_json_line_per_acked_receipt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("acked.jsonl");
        let payers: Arc<[PayerKey]> = Arc::from(vec![PayerKey([0xab; 32])]);
        let log = AckedLog::create(&path, payers).expect("create");
        let sent = |nonce| Sent {
            payer_index: 0,
            payee: Address([0xcd; 20]),
            nonce,
            amount: 12,
            kind: Kind::Valid,
        };
        log.write_batch(&[sent(1), sent(2)], &[Ok(()), Err(Reason::Duplicate)])
            .expect("write");
        log.flush().expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("JSON line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["payer"], "ab".repeat(32));
        assert_eq!(lines[0]["payee"], format!("0x{}", "cd".repeat(20)));
        assert_eq!(lines[1]["nonce"], 2);
        assert_eq!(lines[1]["amount"], 12);
        assert_eq!(lines[1]["verdict"], "duplicate");
    }
}
