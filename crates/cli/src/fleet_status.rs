//! `backlock vault status`: one line per replica, from each replica's own report and the
//! leader's view of how far each one has replicated.

use crate::exit::VaultFailure;
use anyhow::Result;
use backlock_vault_server::fleet::ReplicaView;
use backlock_vault_server::raft::ReplicaReport;
use serde_json::json;

fn opt(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Prints the views; fails (exit 10) when no majority of the fleet answers with one
/// leader, so monitoring can alert on the exit code.
pub(crate) fn print(views: &[ReplicaView], json: bool) -> Result<()> {
    let reports: Vec<&ReplicaReport> = views
        .iter()
        .filter_map(|v| v.report.as_ref().ok())
        .collect();
    let leader = reports.iter().find(|r| r.role == "leader").copied();
    let lag = |id: u64| -> Option<u64> {
        let leader = leader?;
        let matched = leader
            .replication
            .as_ref()?
            .get(&id)
            .copied()
            .flatten()
            .unwrap_or(0);
        Some(leader.last_log_index.unwrap_or(0).saturating_sub(matched))
    };
    if json {
        let replicas: Vec<_> = views
            .iter()
            .map(|v| match &v.report {
                Ok(r) => json!({
                    "id": v.entry.id, "peer": v.entry.peer, "api": v.entry.api, "health": "ok",
                    "role": r.role, "term": r.term, "commit_index": r.commit_index,
                    "last_applied_index": r.last_applied_index, "snapshot_index": r.snapshot_index,
                    "lag": if r.role == "leader" { Some(0) } else { lag(r.node_id) },
                    "votes": r.votes, "state_digest": r.state_digest,
                }),
                Err(e) => json!({
                    "id": v.entry.id, "peer": v.entry.peer, "api": v.entry.api,
                    "health": "unreachable", "error": e,
                }),
            })
            .collect();
        let summary = json!({
            "leader": leader.map(|l| l.node_id),
            "term": leader.map(|l| l.term),
            "commit_index": leader.and_then(|l| l.commit_index),
            "voters": leader.map(|l| l.voters.keys().copied().collect::<Vec<_>>()),
            "replicas": replicas,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{:<8} {:<22} {:<10} {:>5} {:>8} {:>8} {:>6}  health",
            "replica", "peer", "role", "term", "commit", "applied", "lag"
        );
        for v in views {
            match &v.report {
                Ok(r) => println!(
                    "{:<8} {:<22} {:<10} {:>5} {:>8} {:>8} {:>6}  {}",
                    v.entry.id,
                    v.entry.peer,
                    r.role,
                    r.term,
                    opt(r.commit_index),
                    opt(r.last_applied_index),
                    if r.role == "leader" {
                        "0".to_owned()
                    } else {
                        opt(lag(r.node_id))
                    },
                    if r.votes {
                        "ok"
                    } else {
                        "ok, catching up (not voting)"
                    },
                ),
                Err(e) => println!(
                    "{:<8} {:<22} {:<10} {:>5} {:>8} {:>8} {:>6}  unreachable: {e}",
                    v.entry.id, v.entry.peer, "-", "-", "-", "-", "-"
                ),
            }
        }
        match leader {
            Some(l) => println!(
                "leader: replica {}, term {}, commit index {}, voters {:?}",
                l.node_id,
                l.term,
                opt(l.commit_index),
                l.voters.keys().collect::<Vec<_>>()
            ),
            None => println!("leader: none"),
        }
    }
    let majority = views.len() / 2 + 1;
    if leader.is_none() || reports.len() < majority {
        return Err(VaultFailure::Unavailable(format!(
            "{} of {} replicas answered and {}; the fleet serves only with a majority and a leader",
            reports.len(),
            views.len(),
            if leader.is_some() {
                "a leader is known"
            } else {
                "none leads"
            }
        ))
        .into());
    }
    Ok(())
}
