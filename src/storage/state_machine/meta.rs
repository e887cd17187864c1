//! The metadata group's commands: each one applies as a transition of
//! [`MetaState`] (`meta::state`), which judges it again however it was
//! checked before it was proposed. The partition groups' commands change
//! nothing here.

use crate::command::Command;
use crate::meta::seal::SealEnd;
use crate::meta::{MetaError, MetaState};

/// Applying a command to the metadata group's state.
pub trait ApplyMeta {
    fn apply(&mut self, cmd: &Command) -> Result<(), MetaError>;
}

impl ApplyMeta for MetaState {
    fn apply(&mut self, cmd: &Command) -> Result<(), MetaError> {
        match cmd {
            Command::CreateTopic {
                name,
                id,
                partitions,
                configs,
            } => self.create_topic(name, *id, *partitions, configs),
            Command::DeleteTopic { name } => self.delete_topic(name),
            Command::AlterTopic { name, set, delete } => self.alter_topic(name, set, delete),
            Command::RenewLease {
                region,
                until_ms,
                epoch,
            } => self.renew_lease(region, *until_ms, *epoch),
            Command::SealRegion(seal) => self.seal_region(seal),
            Command::MoveHome { topic, to } => self.move_home(topic, to),
            Command::HomeSealed {
                topic,
                partition,
                end,
                last_hlc,
            } => self.home_sealed(
                topic,
                *partition,
                SealEnd {
                    end: *end,
                    last_hlc: *last_hlc,
                },
            ),
            Command::DeleteRecords { topic, starts } => self.delete_records(topic, starts),
            Command::Append { .. }
            | Command::Trim { .. }
            | Command::AppendIdempotent { .. }
            | Command::Close { .. }
            | Command::Replicate { .. }
            | Command::SealLog { .. }
            | Command::SealOwn
            | Command::Reinject { .. }
            | Command::Admit { .. }
            | Command::RemoteHeld { .. }
            | Command::BeginEpoch { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::meta::seal::Seal;
    use crate::meta::{validate_config, validate_create, KEY_WRITERS};

    fn create(name: &str, partitions: u32) -> Command {
        Command::CreateTopic {
            name: name.into(),
            id: uuid::Uuid::new_v4(),
            partitions,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn create_assigns_fresh_sequence_numbers() {
        let mut m = MetaState::default();
        m.apply(&create("a", 3)).unwrap();
        m.apply(&create("b", 1)).unwrap();
        assert_eq!(m.topics["a"].seq, 1);
        assert_eq!(m.topics["b"].seq, 2);
        assert_eq!(
            m.apply(&create("a", 3)),
            Err(MetaError::TopicExists("a".into()))
        );
        m.apply(&Command::DeleteTopic { name: "a".into() }).unwrap();
        m.apply(&create("a", 3)).unwrap();
        assert_eq!(
            m.topics["a"].seq, 3,
            "a re-created topic never reuses a sequence"
        );
    }

    #[test]
    fn invalid_names_partitions_and_configs_are_refused() {
        let mut m = MetaState::default();
        assert!(matches!(
            m.apply(&create("a b", 1)),
            Err(MetaError::InvalidName(_))
        ));
        assert!(matches!(
            m.apply(&create("a", 0)),
            Err(MetaError::InvalidPartitions(0))
        ));
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        let e = validate_create("a", 1, &configs).unwrap_err();
        assert!(e.to_string().contains("allowed value is `delete`"), "{e}");
        let e = validate_config("retention.bitez", "1").unwrap_err();
        assert!(e.to_string().contains("known keys are"), "{e}");
        assert!(validate_config("retention.bytes", "1").is_ok());
        assert!(validate_config("retention.ms", "-1").is_ok());
        let e = validate_config("retention.ms", "-2").unwrap_err();
        assert!(e.to_string().contains("-1 (no limit)"), "{e}");
    }

    #[test]
    fn a_lease_is_renewed_only_for_the_regions_current_epoch() {
        let mut m = MetaState::default();
        let renew = |until_ms, epoch| Command::RenewLease {
            region: "us-east".into(),
            until_ms,
            epoch,
        };
        m.apply(&renew(1_000, 1)).unwrap();
        let seal = Seal {
            region: "us-east".into(),
            epoch: 1,
            decided_at_ms: 2_000,
            margin_ms: 500,
            ends: Default::default(),
            homes: Default::default(),
        };
        m.apply(&Command::SealRegion(seal)).unwrap();
        // A node that has not applied the seal renews for epoch 1: refused,
        // so it cannot write its sealed log on the strength of that renewal.
        let e = m.apply(&renew(9_000, 1)).unwrap_err();
        assert!(
            matches!(
                e,
                MetaError::StaleEpoch {
                    current: 2,
                    asked: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(m.leases["us-east"], 1_000);
        m.apply(&renew(9_000, 2)).unwrap();
        assert_eq!(m.leases["us-east"], 9_000);
    }

    fn create_pinned(m: &mut MetaState, name: &str, home: &str) {
        let configs = BTreeMap::from([(KEY_WRITERS.to_string(), format!("home:{home}"))]);
        m.apply(&Command::CreateTopic {
            name: name.into(),
            id: uuid::Uuid::new_v4(),
            partitions: 2,
            configs,
        })
        .unwrap();
    }

    fn move_home(topic: &str, to: &str) -> Command {
        Command::MoveHome {
            topic: topic.into(),
            to: to.into(),
        }
    }

    fn home_sealed(partition: u32, end: u64) -> Command {
        Command::HomeSealed {
            topic: "orders".into(),
            partition,
            end,
            last_hlc: end * 10,
        }
    }

    #[test]
    fn a_pinned_topics_home_moves_once_every_partition_is_sealed() {
        let mut m = MetaState::default();
        create_pinned(&mut m, "orders", "us-east");
        m.apply(&create("all", 1)).unwrap();
        assert_eq!(m.topics["orders"].first_home.as_deref(), Some("us-east"));
        let refused = |m: &mut MetaState, cmd: &Command| match m.apply(cmd) {
            Err(MetaError::MoveRefused { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        let why = refused(&mut m, &move_home("all", "eu-west"));
        assert!(why.contains("only a pinned topic"), "{why}");
        m.apply(&move_home("orders", "us-east")).unwrap();
        assert!(m.moves.is_empty(), "already there: nothing to do");

        m.apply(&move_home("orders", "eu-west")).unwrap();
        assert_eq!(m.topics["orders"].home(), Some("eu-west"));
        assert_eq!(m.topics["orders"].first_home.as_deref(), Some("us-east"));
        let why = refused(&mut m, &move_home("orders", "ap-south"));
        assert!(
            why.contains("under way (0 of 2 partitions sealed)"),
            "{why}"
        );
        m.apply(&home_sealed(0, 7)).unwrap();
        m.apply(&home_sealed(0, 9)).unwrap();
        assert_eq!(m.moves[0].seals[&0].end, 7, "the first seal counts");
        assert!(m.pending_move("orders").is_some());
        m.apply(&home_sealed(1, 3)).unwrap();
        assert!(m.pending_move("orders").is_none());
        assert!(m.apply(&home_sealed(2, 3)).is_err(), "no partition 2");

        // us-east sealed its log of this epoch: it cannot be the home
        // again before its next epoch.
        assert!(m.handed_off("orders", "us-east"));
        let why = refused(&mut m, &move_home("orders", "us-east"));
        assert!(why.contains("only in a later epoch"), "{why}");
        m.epochs.insert("us-east".into(), 2);
        m.check_move("orders", "us-east").unwrap();
    }

    #[test]
    fn a_failover_of_the_old_home_completes_its_move_with_the_same_seals() {
        let mut m = MetaState::default();
        create_pinned(&mut m, "orders", "us-east");
        m.leases.insert("us-east".into(), 1_000);
        m.apply(&move_home("orders", "eu-west")).unwrap();
        m.apply(&home_sealed(0, 7)).unwrap();
        let g = |p| m.topics["orders"].group(p);
        let (g0, g1) = (g(0), g(1));
        let end = |end| SealEnd { end, last_hlc: 1 };
        // The failover found less of partition 0 (us-east's tail was not
        // copied before it was lost) than us-east had sealed.
        let seal = Seal {
            region: "us-east".into(),
            epoch: 1,
            decided_at_ms: 2_000,
            margin_ms: 500,
            ends: BTreeMap::from([(g0, end(5)), (g1, end(4))]),
            homes: Default::default(),
        };
        m.apply(&Command::SealRegion(seal)).unwrap();
        assert_eq!(m.seals[0].ends[&g0].end, 7, "the move's seal stands");
        assert_eq!(m.moves[0].seals[&1].end, 4, "the failover's completes it");
        assert!(m.pending_move("orders").is_none());
        // A region failed over cannot take the home.
        let e = m.check_move("orders", "us-east").unwrap_err();
        assert!(e.contains("failed over"), "{e}");
    }

    #[test]
    fn alter_sets_and_deletes() {
        let mut m = MetaState::default();
        m.apply(&create("t", 1)).unwrap();
        let mut set = BTreeMap::new();
        set.insert("retention.ms".to_string(), "1000".to_string());
        m.apply(&Command::AlterTopic {
            name: "t".into(),
            set,
            delete: vec![],
        })
        .unwrap();
        assert_eq!(m.topics["t"].configs["retention.ms"], "1000");
        m.apply(&Command::AlterTopic {
            name: "t".into(),
            set: BTreeMap::new(),
            delete: vec!["retention.ms".into()],
        })
        .unwrap();
        assert!(m.topics["t"].configs.is_empty());
    }
}
