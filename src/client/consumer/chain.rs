//! Retry chains, as pure rules: which topics a chain has and how long each
//! delays, the headers a rejected record carries to the next topic, which
//! partition it goes to, and the marker a consumer commits before it moves
//! one so that a crash in the middle neither loses nor repeats the move.

use std::fmt;

use crate::meta::{validate_topic_name, DELAY_MS_MAX, KEY_DELAY_MS, KEY_RETRY_NEXT};

/// Most delivery attempts a chain may have (its retry topics are one fewer).
pub const ATTEMPTS_MAX: u32 = 20;

/// Why the rejected record moved on (the handler's reason).
pub const H_REASON: &str = "meridian.retry.reason";
/// Which delivery attempt rejected it: 1 for the chain's first topic.
pub const H_ATTEMPT: &str = "meridian.retry.attempt";
/// Where it was rejected: `topic/partition/offset`.
pub const H_FROM: &str = "meridian.retry.from";
/// Where it was first written: `topic/partition/offset`.
pub const H_FIRST: &str = "meridian.retry.first";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("--attempts {0}: use 1 to {ATTEMPTS_MAX} (attempts in all; the chain gets one retry topic fewer)")]
    Attempts(u32),
    #[error("--backoff-ms {0}: use 1 ms or more")]
    Backoff(u64),
    #[error("--backoff-max-ms {max} is below --backoff-ms {backoff}")]
    BackoffMax { backoff: u64, max: u64 },
    #[error("--backoff-max-ms {0}: a retry topic delays at most {DELAY_MS_MAX} ms (a week)")]
    BackoffTooLong(u64),
    #[error("chain topic name `{0}` is not valid: use a base name of letters, digits, `.`, `_` or `-`, short enough for `.retry.N` and `.dlq`")]
    Name(String),
}

/// One topic of a retry chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTopic {
    pub name: String,
    /// `meridian.delay.ms` of the topic (0 for the first and the dead-letter topic).
    pub delay_ms: u64,
    /// `meridian.retry.next`: where a record rejected here moves; none for
    /// the dead-letter topic, the chain's end.
    pub next: Option<String>,
}

impl ChainTopic {
    /// The topic configs that make this topic part of its chain.
    pub fn configs(&self) -> Vec<(String, String)> {
        let mut c = Vec::new();
        if self.delay_ms > 0 {
            c.push((KEY_DELAY_MS.to_string(), self.delay_ms.to_string()));
        }
        if let Some(n) = &self.next {
            c.push((KEY_RETRY_NEXT.to_string(), n.clone()));
        }
        c
    }
}

pub fn retry_name(base: &str, k: u32) -> String {
    format!("{base}.retry.{k}")
}

pub fn dlq_name(base: &str) -> String {
    format!("{base}.dlq")
}

/// The topics of the chain for `base` with `attempts` delivery attempts:
/// `base`, `base.retry.1` .. `base.retry.{attempts-1}`, `base.dlq`. Retry
/// topic k delays its records by `backoff_ms * 2^(k-1)`, capped at
/// `backoff_max_ms`.
pub fn plan(
    base: &str,
    attempts: u32,
    backoff_ms: u64,
    backoff_max_ms: u64,
) -> Result<Vec<ChainTopic>, ChainError> {
    if attempts == 0 || attempts > ATTEMPTS_MAX {
        return Err(ChainError::Attempts(attempts));
    }
    if backoff_ms == 0 {
        return Err(ChainError::Backoff(backoff_ms));
    }
    if backoff_max_ms < backoff_ms {
        return Err(ChainError::BackoffMax {
            backoff: backoff_ms,
            max: backoff_max_ms,
        });
    }
    if backoff_max_ms > DELAY_MS_MAX {
        return Err(ChainError::BackoffTooLong(backoff_max_ms));
    }
    let mut names = vec![base.to_string()];
    names.extend((1..attempts).map(|k| retry_name(base, k)));
    names.push(dlq_name(base));
    for n in &names {
        validate_topic_name(n).map_err(|_| ChainError::Name(n.clone()))?;
    }
    let topics = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let last = i + 1 == names.len();
            let delay_ms = if i == 0 || last {
                0
            } else {
                let doublings = (i as u32 - 1).min(63);
                backoff_ms
                    .checked_shl(doublings)
                    .filter(|d| d >> doublings == backoff_ms)
                    .unwrap_or(u64::MAX)
                    .min(backoff_max_ms)
            };
            ChainTopic {
                name: name.clone(),
                delay_ms,
                next: names.get(i + 1).cloned(),
            }
        })
        .collect();
    Ok(topics)
}

/// A record's place: topic, partition, offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

impl Position {
    pub fn parse(s: &str) -> Option<Position> {
        let mut it = s.rsplitn(3, '/');
        let offset = it.next()?.parse().ok()?;
        let partition = it.next()?.parse().ok()?;
        let topic = it.next()?.to_string();
        Some(Position {
            topic,
            partition,
            offset,
        })
    }
}

pub type Headers = Vec<(String, Option<Vec<u8>>)>;

fn header<'a>(headers: &'a Headers, key: &str) -> Option<&'a str> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_deref())
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Which delivery attempt a record with `headers` is on: one more than the
/// attempt that last rejected it, 1 if none did.
pub fn attempt_of(headers: &Headers) -> u32 {
    header(headers, H_ATTEMPT)
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(1, |a| a.saturating_add(1))
}

/// Where a moved record was rejected, if it was.
pub fn from_of(headers: &Headers) -> Option<Position> {
    header(headers, H_FROM).and_then(Position::parse)
}

/// The headers of a record rejected at `from` on delivery `attempt` for
/// `reason`, as it moves on: its own headers, with the chain's replaced.
pub fn moved_headers(headers: &Headers, from: &Position, attempt: u32, reason: &str) -> Headers {
    let first = header(headers, H_FIRST)
        .map(str::to_string)
        .unwrap_or_else(|| from.to_string());
    let mut out: Headers = headers
        .iter()
        .filter(|(k, _)| ![H_REASON, H_ATTEMPT, H_FROM, H_FIRST].contains(&k.as_str()))
        .cloned()
        .collect();
    out.push((H_REASON.into(), Some(reason.as_bytes().to_vec())));
    out.push((H_ATTEMPT.into(), Some(attempt.to_string().into_bytes())));
    out.push((H_FROM.into(), Some(from.to_string().into_bytes())));
    out.push((H_FIRST.into(), Some(first.into_bytes())));
    out
}

/// The partition of the next topic a record rejected in `partition` moves
/// to: the same index, wrapped. One source partition feeds one target
/// partition, so keyed order survives and a crashed move can be checked
/// by scanning one partition.
pub fn target_partition(partition: i32, next_partitions: i32) -> i32 {
    partition.rem_euclid(next_partitions.max(1))
}

/// Committed (as OffsetCommit metadata, at the rejected record's own offset)
/// before a move: the record at `offset` is moving to `next`/`partition`,
/// whose end was `end` just before. After a crash, the member that takes
/// the partition over scans `next`/`partition` from `end` for the record;
/// found, it commits past it, else it delivers the record again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveMarker {
    pub offset: i64,
    pub next: String,
    pub partition: i32,
    pub end: i64,
}

const MARKER_PREFIX: &str = "meridian.move.v1";

impl MoveMarker {
    pub fn encode(&self) -> String {
        format!(
            "{MARKER_PREFIX}:{}:{}:{}:{}",
            self.offset, self.partition, self.end, self.next
        )
    }

    pub fn parse(s: &str) -> Option<MoveMarker> {
        let rest = s.strip_prefix(MARKER_PREFIX)?.strip_prefix(':')?;
        let mut it = rest.splitn(4, ':');
        let offset = it.next()?.parse().ok()?;
        let partition = it.next()?.parse().ok()?;
        let end = it.next()?.parse().ok()?;
        let next = it.next()?.to_string();
        if next.is_empty() {
            return None;
        }
        Some(MoveMarker {
            offset,
            next,
            partition,
            end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_chain_of_three_attempts_has_two_retry_topics_then_the_dlq() {
        let c = plan("orders", 3, 1000, 60_000).unwrap();
        let names: Vec<_> = c.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["orders", "orders.retry.1", "orders.retry.2", "orders.dlq"]
        );
        let delays: Vec<_> = c.iter().map(|t| t.delay_ms).collect();
        assert_eq!(delays, [0, 1000, 2000, 0]);
        assert_eq!(c[0].next.as_deref(), Some("orders.retry.1"));
        assert_eq!(c[2].next.as_deref(), Some("orders.dlq"));
        assert_eq!(c[3].next, None);
        assert_eq!(
            c[1].configs(),
            [
                ("meridian.delay.ms".to_string(), "1000".to_string()),
                (
                    "meridian.retry.next".to_string(),
                    "orders.retry.2".to_string()
                )
            ]
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let c = plan("t", 8, 1000, 10_000).unwrap();
        let delays: Vec<_> = c.iter().map(|t| t.delay_ms).collect();
        assert_eq!(
            delays,
            [0, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 0]
        );
        // No overflow with the largest values.
        let c = plan("t", ATTEMPTS_MAX, DELAY_MS_MAX / 2, DELAY_MS_MAX).unwrap();
        assert!(c.iter().all(|t| t.delay_ms <= DELAY_MS_MAX));
        assert_eq!(
            plan("t", 2, 1, DELAY_MS_MAX + 1),
            Err(ChainError::BackoffTooLong(DELAY_MS_MAX + 1))
        );
        // One attempt: straight to the dead-letter topic.
        let c = plan("t", 1, 10, 10).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].next.as_deref(), Some("t.dlq"));
    }

    #[test]
    fn bad_chains_say_what_to_change() {
        assert_eq!(plan("t", 0, 1, 1), Err(ChainError::Attempts(0)));
        assert_eq!(plan("t", 21, 1, 1), Err(ChainError::Attempts(21)));
        assert_eq!(plan("t", 2, 0, 1), Err(ChainError::Backoff(0)));
        assert!(matches!(
            plan("t", 2, 10, 5),
            Err(ChainError::BackoffMax { .. })
        ));
        assert!(matches!(plan("a b", 2, 1, 1), Err(ChainError::Name(_))));
        let long = "x".repeat(245);
        assert!(matches!(plan(&long, 2, 1, 1), Err(ChainError::Name(_))));
    }

    fn h(k: &str, v: &str) -> (String, Option<Vec<u8>>) {
        (k.to_string(), Some(v.as_bytes().to_vec()))
    }

    #[test]
    fn moved_headers_count_attempts_and_keep_the_first_place() {
        let first = Position {
            topic: "orders".into(),
            partition: 2,
            offset: 7,
        };
        let user = vec![h("trace", "abc")];
        assert_eq!(attempt_of(&user), 1);
        let once = moved_headers(&user, &first, 1, "timeout");
        assert_eq!(attempt_of(&once), 2);
        assert_eq!(from_of(&once), Some(first.clone()));
        let second = Position {
            topic: "orders.retry.1".into(),
            partition: 2,
            offset: 0,
        };
        let twice = moved_headers(&once, &second, 2, "still down");
        assert_eq!(attempt_of(&twice), 3);
        assert_eq!(from_of(&twice), Some(second));
        assert_eq!(header(&twice, H_FIRST), Some("orders/2/7"));
        assert_eq!(header(&twice, H_REASON), Some("still down"));
        assert_eq!(header(&twice, "trace"), Some("abc"));
        // The chain's headers are replaced, not piled up.
        assert_eq!(twice.len(), 5);
    }

    #[test]
    fn positions_and_markers_read_back() {
        let p = Position {
            topic: "a/b".into(),
            partition: 3,
            offset: 9,
        };
        assert_eq!(Position::parse(&p.to_string()), Some(p));
        assert_eq!(Position::parse("t/x/1"), None);
        let m = MoveMarker {
            offset: 41,
            next: "orders.retry.1".into(),
            partition: 0,
            end: 17,
        };
        assert_eq!(MoveMarker::parse(&m.encode()), Some(m));
        assert_eq!(MoveMarker::parse(""), None);
        assert_eq!(MoveMarker::parse("meridian.move.v1:1:2:3:"), None);
    }

    proptest! {
        #[test]
        fn targets_stay_in_range(p in 0i32..100_000, n in 1i32..1024) {
            let t = target_partition(p, n);
            prop_assert!((0..n).contains(&t));
            prop_assert_eq!(target_partition(p, n), t);
        }

        #[test]
        fn delays_never_shrink_along_the_chain(
            attempts in 1u32..=ATTEMPTS_MAX,
            backoff in 1u64..1_000_000,
            cap in 1u64..10_000_000,
        ) {
            let cap = cap.max(backoff);
            let c = plan("t", attempts, backoff, cap).unwrap();
            prop_assert_eq!(c.len() as u32, attempts + 1);
            let retries: Vec<u64> = c[1..c.len() - 1].iter().map(|t| t.delay_ms).collect();
            prop_assert!(retries.windows(2).all(|w| w[0] <= w[1]));
            prop_assert!(retries.iter().all(|d| *d >= backoff && *d <= cap));
        }
    }
}
