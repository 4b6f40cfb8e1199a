//! A single-level timer wheel: the schedule of every athlete's next post.
//!
//! Time is cut into `SLOT_MS` slots; slot `k` holds the athletes due in
//! `[k * SLOT_MS, (k + 1) * SLOT_MS)` after the base time, in a ring long
//! enough for the longest interval, so an athlete costs 4 bytes here and
//! there is no per-athlete timer. Only the scheduler task touches it.

pub const SLOT_MS: u64 = 10;

pub struct Wheel {
    slots: Vec<Vec<u32>>,
    /// The next slot (absolute number) `due` will hand out.
    next: u64,
    len: usize,
}

impl Wheel {
    /// A wheel for deadlines at most `horizon_ms` ahead of the current slot.
    pub fn new(horizon_ms: u64) -> Wheel {
        let n = (horizon_ms / SLOT_MS + 2) as usize;
        Wheel {
            slots: (0..n).map(|_| Vec::new()).collect(),
            next: 0,
            len: 0,
        }
    }

    /// Schedules `who` at `at_ms` after the base time; a deadline already
    /// past goes into the next slot handed out.
    pub fn insert(&mut self, at_ms: u64, who: u32) {
        let slot = (at_ms / SLOT_MS).max(self.next);
        debug_assert!(slot - self.next < self.slots.len() as u64, "beyond horizon");
        let ring = self.slots.len() as u64;
        self.slots[(slot % ring) as usize].push(who);
        self.len += 1;
    }

    /// Takes the next slot if it has started by `now_ms`: its start time in
    /// ms and its athletes (the caller reinserts them).
    pub fn due(&mut self, now_ms: u64, spare: Vec<u32>) -> Option<(u64, Vec<u32>)> {
        let start = self.next * SLOT_MS;
        if start > now_ms {
            return None;
        }
        let ring = self.slots.len() as u64;
        let mut spare = spare;
        spare.clear();
        let taken = std::mem::replace(&mut self.slots[(self.next % ring) as usize], spare);
        self.next += 1;
        self.len -= taken.len();
        Some((start, taken))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_athletes_in_deadline_order_around_the_ring() {
        let mut w = Wheel::new(100);
        w.insert(5, 1);
        w.insert(95, 2);
        w.insert(30, 3);
        let mut seen = Vec::new();
        let mut spare = Vec::new();
        for now in (0..=200).step_by(10) {
            while let Some((start, who)) = w.due(now, spare) {
                for &a in &who {
                    seen.push((start, a));
                    if a == 1 && start < 100 {
                        w.insert(start + 100, 1);
                    }
                }
                spare = who;
            }
            spare = Vec::new();
        }
        assert_eq!(seen, vec![(0, 1), (30, 3), (90, 2), (100, 1)]);
        assert!(w.is_empty());
    }
}
