//! A handler that asks a shell command about each record, for
//! `meridian consume --group G --exec CMD`: the record's value on standard
//! input, its place in `MERIDIAN_*` variables; exit status 0 accepts it,
//! any other rejects it with the last line the command wrote to standard
//! error as the reason.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{Delivery, Verdict};

/// Longest reason kept from a command's standard error.
const REASON_BYTES_MAX: usize = 1024;

/// The reason a command's failure gives: its last non-empty line of
/// standard error, else its exit status.
pub fn reason(stderr: &[u8], status: Option<i32>) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty());
    let mut r = match (line, status) {
        (Some(l), _) => l.to_string(),
        (None, Some(c)) => format!("exit status {c}"),
        (None, None) => "killed by a signal".to_string(),
    };
    if r.len() > REASON_BYTES_MAX {
        let mut cut = REASON_BYTES_MAX;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        r.truncate(cut);
    }
    r
}

/// Runs `sh -c command` for delivery `d`, killing it after `timeout`.
pub async fn verdict(command: &str, d: &Delivery, timeout: Duration) -> Verdict {
    let key = d
        .record
        .key
        .as_deref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("MERIDIAN_TOPIC", &d.topic)
        .env("MERIDIAN_PARTITION", d.record.partition.to_string())
        .env("MERIDIAN_OFFSET", d.record.offset.to_string())
        .env("MERIDIAN_ATTEMPT", d.attempt.to_string())
        .env("MERIDIAN_KEY", key)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Verdict::Reject(format!("cannot run `{command}`: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let value = d.record.value.clone().unwrap_or_default();
        // A command that does not read its input may close it early.
        let _ = stdin.write_all(&value).await;
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Verdict::Accept,
        Ok(Ok(out)) => Verdict::Reject(reason(&out.stderr, out.status.code())),
        Ok(Err(e)) => Verdict::Reject(format!("`{command}` failed: {e}")),
        Err(_) => Verdict::Reject(format!(
            "`{command}` did not finish within {} ms",
            timeout.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Consumed;

    fn delivery(value: &str) -> Delivery {
        Delivery {
            topic: "orders".into(),
            attempt: 2,
            record: Consumed {
                partition: 1,
                offset: 5,
                timestamp: 0,
                key: Some(b"k".to_vec()),
                value: Some(value.as_bytes().to_vec()),
                origin: None,
                hlc: None,
                headers: vec![],
            },
        }
    }

    #[test]
    fn reasons_come_from_the_last_line_of_stderr() {
        assert_eq!(
            reason(b"warming up\nout of stock\n\n", Some(1)),
            "out of stock"
        );
        assert_eq!(reason(b"", Some(3)), "exit status 3");
        assert_eq!(reason(b"  ", None), "killed by a signal");
        assert_eq!(reason("é".repeat(1000).as_bytes(), Some(1)).len(), 1024);
    }

    #[tokio::test]
    async fn a_command_accepts_or_rejects_with_its_reason() {
        let d = delivery("poison");
        let t = Duration::from_secs(10);
        let check = r#"v=$(cat); [ "$MERIDIAN_TOPIC/$MERIDIAN_PARTITION/$MERIDIAN_OFFSET/$MERIDIAN_ATTEMPT/$MERIDIAN_KEY" = orders/1/5/2/k ] || exit 9; case "$v" in *poison*) echo "poisoned: $v" >&2; exit 1;; esac"#;
        assert_eq!(
            verdict(check, &d, t).await,
            Verdict::Reject("poisoned: poison".into())
        );
        assert_eq!(verdict(check, &delivery("fine"), t).await, Verdict::Accept);
        let slow = verdict("sleep 5", &d, Duration::from_millis(100)).await;
        assert!(matches!(slow, Verdict::Reject(r) if r.contains("did not finish")));
    }
}
