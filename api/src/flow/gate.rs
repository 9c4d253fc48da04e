//! The relay's gate: of a batch of due outbox entries, which go to the broker now. Reads the
//! limits' state under the kinds' locks, decides ([`super::admit`]), records what the decisions
//! took (slots, rate turns) and holds the rest, all in the batch's transaction: if the publish
//! fails, none of it happened.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use sqlx::{Postgres, Transaction};

use super::Flow;
use super::admit::{self, Candidate, Decision};
use crate::store::flow::{self as store, Hold};
use crate::store::outbox::Unpublished;

/// The entries of `rows` to publish now, in their order; the others are held. Stale entries
/// pass through (the relay drops them).
pub async fn admit(
    tx: &mut Transaction<'_, Postgres>,
    rows: Vec<Unpublished>,
    flow: &Flow,
) -> sqlx::Result<Vec<Unpublished>> {
    let gated = |r: &Unpublished| !r.stale && (r.paused || flow.limits(&r.kind).any());
    if !rows.iter().any(gated) {
        return Ok(rows);
    }
    let (gated, mut free): (Vec<Unpublished>, Vec<Unpublished>) =
        rows.into_iter().partition(|r| gated(r));
    let limited: Vec<&str> = gated
        .iter()
        .filter(|r| !r.paused)
        .map(|r| r.kind.as_str())
        .collect();
    let slot_kinds: Vec<&str> = limited
        .iter()
        .copied()
        .filter(|k| flow.limits(k).counts_slots())
        .collect();
    let rate_kinds: Vec<&str> = limited
        .iter()
        .copied()
        .filter(|k| flow.limits(k).counts_rate())
        .collect();
    store::lock_kinds(tx, &limited).await?;
    let keys: Vec<&str> = gated.iter().map(|r| r.concurrency_key.as_str()).collect();
    let ids: Vec<uuid::Uuid> = gated.iter().map(|r| r.id).collect();
    let (mut state, holding) = store::read_state(tx, &slot_kinds, &rate_kinds, &keys, &ids).await?;
    let candidates: Vec<Candidate> = gated
        .iter()
        .map(|r| Candidate {
            id: r.id,
            kind: r.kind.clone(),
            key: r.concurrency_key.clone(),
            paused: r.paused,
            reserved: r.held.as_deref() == Some("rate"),
            has_slot: holding.contains(&r.id),
        })
        .collect();
    let decisions = admit::decide(&candidates, flow, &mut state, Utc::now());

    let mut slots = (Vec::new(), Vec::new(), Vec::new());
    let mut holds = Vec::new();
    let mut publish = Vec::new();
    for (row, decision) in gated.into_iter().zip(decisions) {
        let hold = |reason, until| Hold {
            id: row.id,
            reason,
            until,
            kind: row.kind.clone(),
            key: row.concurrency_key.clone(),
            turn: row.turn,
            // Still marked held: the recheck timer brought it here, not a freed slot.
            age: reason == "concurrency" && row.held.as_deref() == Some("concurrency"),
        };
        match decision {
            Decision::Publish { take_slot } => {
                if take_slot {
                    slots.0.push(row.id);
                    slots.1.push(row.kind.clone());
                    slots.2.push(row.concurrency_key.clone());
                }
                publish.push(row);
            }
            Decision::Paused => holds.push(hold("paused", None)),
            Decision::Concurrency => holds.push(hold("concurrency", None)),
            Decision::Rate(at) => holds.push(hold("rate", Some(at))),
        }
    }
    give_turns(tx, &mut holds).await?;
    let kinds: Vec<&str> = slots.1.iter().map(String::as_str).collect();
    let keys: Vec<&str> = slots.2.iter().map(String::as_str).collect();
    store::take_slots(tx, &slots.0, &kinds, &keys).await?;
    store::save_rates(tx, &state).await?;
    store::hold(tx, &holds).await?;
    for h in &holds {
        metrics::counter!("jobstack_jobs_held_total", "kind" => h.kind.clone(), "reason" => h.reason)
            .increment(1);
    }
    // Back in the batch's order: priority, then due time.
    free.extend(publish);
    free.sort_by(|a, b| {
        (b.priority.cmp(&a.priority))
            .then(a.run_at.cmp(&b.run_at))
            .then(a.turn.cmp(&b.turn))
    });
    Ok(free)
}

/// Gives each new concurrency hold its turn in its key's line: after the key's last one, and
/// no earlier than the kind's lowest turn in line, so a key that joins takes turns with the
/// others instead of going ahead of all of them. A hold that had a turn keeps it.
async fn give_turns(tx: &mut Transaction<'_, Postgres>, holds: &mut [Hold]) -> sqlx::Result<()> {
    let mut by_kind: HashMap<String, HashSet<String>> = HashMap::new();
    for h in holds
        .iter()
        .filter(|h| h.reason == "concurrency" && h.turn.is_none())
    {
        by_kind
            .entry(h.kind.clone())
            .or_default()
            .insert(h.key.clone());
    }
    for (kind, keys) in by_kind {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (mut last, lowest) = store::turns(tx, &kind, &keys).await?;
        for h in holds
            .iter_mut()
            .filter(|h| h.reason == "concurrency" && h.turn.is_none() && h.kind == kind)
        {
            let next = last.get(&h.key).map_or(lowest, |t| (t + 1).max(lowest));
            last.insert(h.key.clone(), next);
            h.turn = Some(next);
        }
    }
    Ok(())
}
