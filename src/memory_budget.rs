//! Byte budgets that every torrent of one shard shares: one for piece
//! buffers (pieces being received, hashed or written), one for outgoing
//! block data (reads for uploads in flight, bytes queued for a peer, bytes
//! being written to its socket).
//!
//! Layer: pure core (no I/O, no clock). The shard owns each [`ByteBudget`]
//! and hands it to its torrents' cores; a core holds its part through a
//! [`BudgetShare`], which remembers what that core charged so it can never
//! give back more than it took, and gives everything back when dropped (a
//! removed torrent). Atomics rather than `Cell`s only so the control plane
//! can read the gauges from another thread; on the data path only the shard
//! thread touches them (uncontended).
//!
//! Policy: bytes that exist are always charged ([`BudgetShare::charge`]
//! never fails, so a block that arrived is never thrown away); the budget
//! gates only *new* work: a new piece, a new upload read
//! ([`BudgetShare::has_room`]). The limit is therefore soft by at most the
//! work already started (pieces partly requested, reads in flight), and the
//! engine never aborts anything over it. A refusal is remembered, and once
//! usage falls to [`LOW_WATER_PERCENT`] of the limit [`ByteBudget::take_wake`]
//! tells the driver to let held-back torrents retry (hysteresis: one retry
//! round per refill, not one per freed byte).
//!
//! Invariant: `used_bytes` is the sum of every share's `held_bytes`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Usage, in percent of the limit, at or below which held-back work is woken.
pub const LOW_WATER_PERCENT: u64 = 75;

/// A byte budget shared by the torrents of one shard. See the module docs.
#[derive(Debug)]
pub struct ByteBudget {
    limit_bytes: u64,
    used_bytes: AtomicU64,
    /// Work was held back since the last wake.
    refused: AtomicBool,
}

impl ByteBudget {
    /// A budget of `limit_bytes` (`u64::MAX`: unlimited).
    pub fn new(limit_bytes: u64) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            limit_bytes,
            used_bytes: AtomicU64::new(0),
            refused: AtomicBool::new(false),
        })
    }

    /// The limit in bytes.
    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Bytes charged now.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// Whether new work may start (usage below the limit); a refusal is
    /// remembered for [`ByteBudget::take_wake`].
    fn has_room(&self) -> bool {
        let room = self.used_bytes() < self.limit_bytes;
        if !room {
            self.refused.store(true, Ordering::Relaxed);
        }
        room
    }

    fn charge(&self, bytes: u64) {
        self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn release(&self, bytes: u64) {
        // Shares never release more than they charged, so this cannot wrap.
        self.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// True once after work was refused, when usage has fallen to the low
    /// water mark: the driver then lets every torrent of the shard retry.
    pub fn take_wake(&self) -> bool {
        if !self.refused.load(Ordering::Relaxed) {
            return false;
        }
        let low = self.limit_bytes / 100 * LOW_WATER_PERCENT;
        self.used_bytes() <= low && self.refused.swap(false, Ordering::Relaxed)
    }
}

/// The budgets of one shard: piece buffers and outgoing block bytes.
#[derive(Clone, Debug)]
pub struct ShardMemory {
    pub pieces: Arc<ByteBudget>,
    pub send: Arc<ByteBudget>,
}

impl ShardMemory {
    pub fn new(piece_limit_bytes: u64, send_limit_bytes: u64) -> ShardMemory {
        ShardMemory {
            pieces: ByteBudget::new(piece_limit_bytes),
            send: ByteBudget::new(send_limit_bytes),
        }
    }

    /// Budgets that never refuse (tests).
    pub fn unlimited() -> ShardMemory {
        ShardMemory::new(u64::MAX, u64::MAX)
    }
}

/// One holder's part of a [`ByteBudget`] (or of none: unlimited, still
/// counted). Gives back what it holds when dropped.
#[derive(Debug, Default)]
pub struct BudgetShare {
    budget: Option<Arc<ByteBudget>>,
    held_bytes: u64,
}

impl BudgetShare {
    /// Moves this share onto `budget`, carrying what it holds over.
    pub fn set_budget(&mut self, budget: Arc<ByteBudget>) {
        if let Some(old) = &self.budget {
            old.release(self.held_bytes);
        }
        budget.charge(self.held_bytes);
        self.budget = Some(budget);
    }

    /// Whether new work may start (always, without a budget).
    pub fn has_room(&self) -> bool {
        self.budget.as_ref().is_none_or(|b| b.has_room())
    }

    /// Counts `bytes` that now exist (never refused).
    pub fn charge(&mut self, bytes: u64) {
        self.held_bytes += bytes;
        if let Some(budget) = &self.budget {
            budget.charge(bytes);
        }
    }

    /// Gives back `bytes` (at most what this share holds).
    pub fn release(&mut self, bytes: u64) {
        let bytes = bytes.min(self.held_bytes);
        self.held_bytes -= bytes;
        if let Some(budget) = &self.budget {
            budget.release(bytes);
        }
    }

    /// Bytes this share holds.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        let held = self.held_bytes;
        self.release(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_give_back_on_drop() {
        let budget = ByteBudget::new(100);
        let mut a = BudgetShare::default();
        a.charge(30);
        a.set_budget(budget.clone());
        assert_eq!(budget.used_bytes(), 30, "what it held before is carried over");
        let mut b = BudgetShare::default();
        b.set_budget(budget.clone());
        b.charge(50);
        assert_eq!(budget.used_bytes(), 80);
        b.release(500);
        assert_eq!(b.held_bytes(), 0, "never releases more than it holds");
        assert_eq!(budget.used_bytes(), 30);
        b.charge(10);
        drop(b);
        drop(a);
        assert_eq!(budget.used_bytes(), 0);
    }

    #[test]
    fn room_until_the_limit_then_one_wake_at_low_water() {
        let budget = ByteBudget::new(100);
        let mut share = BudgetShare::default();
        share.set_budget(budget.clone());
        assert!(share.has_room());
        assert!(!budget.take_wake(), "nothing refused");
        share.charge(120); // bytes that exist are never refused
        assert!(!share.has_room());
        assert!(!budget.take_wake(), "still over");
        share.release(30);
        assert!(!budget.take_wake(), "90: above the low water mark");
        share.release(15);
        assert!(budget.take_wake(), "75: at the low water mark");
        assert!(!budget.take_wake(), "once per refusal");
        assert!(share.has_room());
    }

    #[test]
    fn without_a_budget_there_is_always_room() {
        let mut share = BudgetShare::default();
        share.charge(u64::MAX / 2);
        assert!(share.has_room());
        assert_eq!(share.held_bytes(), u64::MAX / 2);
    }
}
