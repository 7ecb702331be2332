//! `TimersFired`: the due rows of `queue_timers`, fired in key order.
//!
//! One timer view holds the deadlines of queues (delay ends, lease and
//! message expiry, dedup windows) and of cache entries (TTL expiry). This
//! module scans it and hands each due timer to its owner: the cache
//! ([`cache::expire`]) or the queues ([`queue_apply::fire`]). Time is the
//! event's, so a timer fires only when the leader proposes `TimersFired`.

use super::queue_rows::{Timer, TimerKind};
use super::txn::{RowStore, ViewTxn};
use super::{View, cache, queue_apply};
use crate::error::Result;
use crate::event::{FiredTimers, Outcome};

/// Fires one due timer; the timer row is already deleted.
fn fire_one<S: RowStore>(
    txn: &mut ViewTxn<'_, S>,
    now: u64,
    timer: &Timer,
    fired: &mut FiredTimers,
) -> Result<()> {
    if timer.kind == TimerKind::CacheExpires {
        if cache::expire(txn, timer)? {
            fired.cache_expired += 1;
        }
        return Ok(());
    }
    queue_apply::fire(txn, now, timer, fired)
}

/// Fires up to `max` timers due at `now`, in key order, each by its owner.
pub(super) fn fire<S: RowStore>(txn: &mut ViewTxn<'_, S>, now: u64, max: u32) -> Result<Outcome> {
    let mut fired = FiredTimers::default();
    let max = max as usize;
    let mut count = 0;
    'scan: loop {
        let keys = txn.keys(View::QueueTimers, &[], &[], (max - count).saturating_add(1))?;
        if keys.is_empty() {
            break;
        }
        for key in keys {
            let Some(timer) = Timer::from_key(&key) else {
                txn.delete(View::QueueTimers, key)?;
                continue;
            };
            if timer.due_ms > now {
                break 'scan;
            }
            // A timer fired before it in this loop may have removed it (a
            // TTL ending a delayed or leased message): it neither fires nor
            // counts as due.
            if txn.get::<()>(View::QueueTimers, &key)?.is_none() {
                continue;
            }
            if count == max {
                fired.more_due = true;
                break 'scan;
            }
            txn.delete(View::QueueTimers, key)?;
            fire_one(txn, now, &timer, &mut fired)?;
            count += 1;
        }
    }
    Ok(Outcome::TimersFired(fired))
}
