//! The in-core state's consistency checks: the log's cursors in order, the index consistent
//! with itself, dirty counts that add up. Tests (the simulation after every step) call them.

use super::*;

impl<D: BlockDevice + 'static, R: Runtime> Volume<D, R> {
    /// Consistency checks of the in-core state (tests call this after every step).
    pub fn check_invariants(&self) {
        let st = self.inner.st.borrow();
        assert!(
            st.log.last_writeback <= st.log.last_durable,
            "writeback ahead of durable"
        );
        assert!(
            st.log.last_durable <= st.log.last_written,
            "durable ahead of written"
        );
        assert!(
            st.log.last_written <= st.log.last_sealed,
            "written ahead of sealed"
        );
        let newest_id = st.newest_id();
        assert!(
            newest_id - st.log.last_writeback <= st.geo.nr_segments,
            "log overran writeback"
        );
        let mut dirty = 0;
        for cb in 0..st.geo.nr_cache_blocks() {
            let b = st.index.backing_of(cb);
            if b == index::NO_BLOCK {
                continue;
            }
            assert_eq!(
                st.index.lookup(b),
                Some(cb),
                "index inconsistent for block {b}"
            );
            assert_eq!(st.index.dirty(cb) & !st.index.valid(cb), 0);
            if st.index.dirty(cb) != 0 {
                dirty += 1;
                let id = st.log.slot_id[st.slot_of_cb(cb) as usize];
                assert!(
                    id > st.log.last_writeback,
                    "dirty block {b} in written-back segment {id} (degraded: {}, bypass in flight: {})",
                    st.health.degraded.is_some(),
                    st.cutoff.bypass_inflight.contains_key(&b)
                );
            }
        }
        assert_eq!(dirty, st.nr_dirty, "nr_dirty drifted");
    }
}
