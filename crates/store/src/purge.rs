//! Dropping old answer bodies ([`OperationStore::purge`]) in short transactions, the same way
//! on both backends; each backend runs one chunk (`purge_chunk` in its `sql`).
//!
//! One statement over every final operation, as this once was, scanned the whole history on
//! every hourly pass (a row read per operation ever finished, to see whether its body was
//! still there: 0.17 s at 10^6 stored operations, in the SQLite writer's transaction, with
//! every write waiting behind it) and dropped a whole hour of bodies in one transaction. Here
//! a pass only looks at operations last changed since the previous pass's cut (an operation
//! changes with `updated_at` = now, so nothing older than a cut can become purgeable after
//! it), oldest first, [`CHUNK`] at a time, each chunk its own transaction. The first pass of
//! a process starts where the oldest body still kept is, found by a read
//! (`read::oldest_kept_answer`) outside any write transaction.
//!
//! [`OperationStore::purge`]: refund_gateway_domain::OperationStore::purge

use std::future::Future;
use std::sync::Mutex;

use refund_gateway_domain::StoreError;

/// Most answer bodies dropped in one transaction.
pub(crate) const CHUNK: u32 = 500;

/// The final states whose bodies go, each scanned on its own so that the
/// `operations_by_state (state, updated_at)` index gives the rows oldest first.
const FINAL_STATES: [&str; 2] = ["SUCCEEDED", "FAILED"];

/// The cut (microseconds) of this process's last complete pass: every final operation last
/// changed before it has no body any more. Not stored: after a restart the first pass reads
/// everything once, outside any write transaction, to find where to start.
#[derive(Debug, Default)]
pub(crate) struct Purger {
    purged_before: Mutex<Option<i64>>,
}

impl Purger {
    /// Drops the bodies of final operations last changed before `before`, through
    /// `chunk(state, from, before, limit)`, which drops up to `limit` bodies of operations in
    /// `state` last changed in `from..before`, oldest first, in one transaction, and returns
    /// the `updated_at` of each. Without a previous cut, each state starts at
    /// `oldest(state, before)`, the oldest body kept (`None`: none to drop). Returns how many
    /// bodies were dropped. A failed step ends the pass with its error, and the next pass
    /// starts from the last complete one's cut.
    pub(crate) async fn purge<O, OFut, F, Fut>(
        &self,
        before: i64,
        mut oldest: O,
        mut chunk: F,
    ) -> Result<u64, StoreError>
    where
        O: FnMut(&'static str, i64) -> OFut,
        OFut: Future<Output = Result<Option<i64>, StoreError>>,
        F: FnMut(&'static str, i64, i64, u32) -> Fut,
        Fut: Future<Output = Result<Vec<i64>, StoreError>>,
    {
        let last_cut = self.cut();
        let mut dropped = 0;
        for state in FINAL_STATES {
            let mut from = match last_cut {
                Some(cut) => cut,
                None => match oldest(state, before).await? {
                    Some(oldest) => oldest,
                    None => continue,
                },
            };
            loop {
                let changed = chunk(state, from, before, CHUNK).await?;
                dropped += changed.len() as u64;
                if changed.len() < CHUNK as usize {
                    break;
                }
                // Operations changed in the same microsecond as the chunk's newest one may
                // still hold their bodies: the next chunk starts at it, not after it.
                from = changed.iter().copied().max().unwrap_or(from);
            }
        }
        let mut cut = self.purged_before.lock().unwrap_or_else(|e| e.into_inner());
        *cut = Some(cut.map_or(before, |c| c.max(before)));
        Ok(dropped)
    }

    fn cut(&self) -> Option<i64> {
        *self.purged_before.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bodies of (state, updated_at), dropped as a backend would; and the chunks asked for,
    /// as (state, from).
    #[derive(Default)]
    struct Bodies {
        kept: Mutex<Vec<(&'static str, i64)>>,
        chunks: Mutex<Vec<(&'static str, i64)>>,
    }

    impl Bodies {
        fn oldest(&self, state: &str, before: i64) -> Option<i64> {
            let bodies = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            bodies
                .iter()
                .filter(|(s, at)| *s == state && *at < before)
                .map(|(_, at)| *at)
                .min()
        }

        fn chunk(&self, state: &'static str, from: i64, before: i64, limit: u32) -> Vec<i64> {
            self.chunks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((state, from));
            let mut bodies = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let mut found: Vec<i64> = bodies
                .iter()
                .filter(|(s, at)| *s == state && *at >= from && *at < before)
                .map(|(_, at)| *at)
                .collect();
            found.sort_unstable();
            found.truncate(limit as usize);
            for at in &found {
                let i = bodies
                    .iter()
                    .position(|(s, a)| *s == state && a == at)
                    .unwrap_or_else(|| panic!("{state} {at} found and gone"));
                bodies.remove(i);
            }
            found
        }
    }

    #[tokio::test]
    async fn chunks_until_short_and_then_only_since_the_last_cut() {
        let bodies = Bodies::default();
        {
            let mut b = bodies.kept.lock().unwrap_or_else(|e| e.into_inner());
            // More than two chunks of one state, some sharing a microsecond across a chunk's
            // edge, and a few of the other.
            for i in 0..1_200 {
                b.push(("SUCCEEDED", i / 3));
            }
            b.extend([("FAILED", 5), ("FAILED", 900), ("SUCCEEDED", 5_000)]);
        }
        let purger = Purger::default();
        let dropped = purger
            .purge(
                1_000,
                |state, before| {
                    let oldest = bodies.oldest(state, before);
                    async move { Ok(oldest) }
                },
                |state, from, before, limit| {
                    let changed = bodies.chunk(state, from, before, limit);
                    async move { Ok(changed) }
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dropped, 1_202);
        assert_eq!(
            *bodies.kept.lock().unwrap_or_else(|e| e.into_inner()),
            [("SUCCEEDED", 5_000)]
        );
        assert_eq!(
            *bodies.chunks.lock().unwrap_or_else(|e| e.into_inner()),
            [
                ("SUCCEEDED", 0),
                ("SUCCEEDED", 166),
                ("SUCCEEDED", 333),
                ("FAILED", 5)
            ]
        );

        // The next pass looks only at what changed since the last cut.
        bodies
            .chunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let dropped = purger
            .purge(
                6_000,
                |_, _| async { panic!("a pass after a cut starts at the cut") },
                |state, from, before, limit| {
                    let changed = bodies.chunk(state, from, before, limit);
                    async move { Ok(changed) }
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dropped, 1);
        assert_eq!(
            *bodies.chunks.lock().unwrap_or_else(|e| e.into_inner()),
            [("SUCCEEDED", 1_000), ("FAILED", 1_000)]
        );
    }

    #[tokio::test]
    async fn a_failed_chunk_keeps_the_last_cut() {
        let purger = Purger::default();
        purger
            .purge(
                100,
                |_, _| async { Ok(None) },
                |_, _, _, _| async { panic!("no body kept: nothing to drop") },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let failed = purger
            .purge(
                200,
                |_, _| async { Ok(Some(0)) },
                |_, _, _, _| async { Err(StoreError::Unavailable("disk".into())) },
            )
            .await;
        assert!(matches!(failed, Err(StoreError::Unavailable(_))));
        assert_eq!(purger.cut(), Some(100));
    }
}
