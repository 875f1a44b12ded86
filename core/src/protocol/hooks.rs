//! What the simulator (feature `sim`) sets on the thread it runs on: a seeded source for
//! the random ids and nonces, so that a seed reproduces a run exactly, and the mutations
//! its own tests switch on to show that its checks find broken guards.
//!
//! Without the feature nothing here can be set: ids come from the system's randomness and
//! no check is ever broken. With it, only code on the simulator's thread is affected.

/// A fresh random 128-bit number: from the simulator's seeded source when one is
/// installed on this thread, else from the system.
pub(crate) fn random_u128() -> u128 {
    #[cfg(feature = "sim")]
    if let Some(n) = sim::next() {
        return n;
    }
    uuid::Uuid::new_v4().as_u128()
}

/// A guard the simulator's own tests break on purpose (never set outside them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "sim"), allow(dead_code))]
pub(crate) enum Mutation {
    /// The instance store records a second result over the first.
    DuplicateResults,
    /// A mailbox drain keeps the last state it took, whatever its version.
    MailboxVersion,
    /// A mailbox drain leaves two states of one version unordered (the first wins), as
    /// before states counted what their drains took.
    EqualVersions,
}

/// Whether `m` is switched on for this thread.
#[inline]
pub(crate) fn mutated(m: Mutation) -> bool {
    #[cfg(feature = "sim")]
    {
        sim::mutated(m)
    }
    #[cfg(not(feature = "sim"))]
    {
        let _ = m;
        false
    }
}

#[cfg(feature = "sim")]
pub(crate) mod sim {
    use std::cell::Cell;

    use super::Mutation;

    thread_local! {
        static SEED: Cell<Option<u64>> = const { Cell::new(None) };
        static MUTATIONS: Cell<u8> = const { Cell::new(0) };
    }

    fn bit(m: Mutation) -> u8 {
        match m {
            Mutation::DuplicateResults => 1,
            Mutation::MailboxVersion => 2,
            Mutation::EqualVersions => 4,
        }
    }

    /// splitmix64: small, fast, and good enough for ids.
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    pub(crate) fn next() -> Option<u128> {
        SEED.with(|s| {
            let cur = s.get()?;
            let a = mix(cur);
            let b = mix(cur.wrapping_add(0x9e37_79b9_7f4a_7c15));
            s.set(Some(cur.wrapping_add(0x3c6e_f372_fe94_f82a)));
            Some(((a as u128) << 64) | b as u128)
        })
    }

    pub(crate) fn mutated(m: Mutation) -> bool {
        MUTATIONS.with(|f| f.get() & bit(m) != 0)
    }

    /// Installs the seeded source and the mutations on this thread until the guard drops.
    pub(crate) struct Installed {
        seed: Option<u64>,
        mutations: u8,
    }

    pub(crate) fn install(seed: u64, mutations: &[Mutation]) -> Installed {
        let mask = mutations.iter().fold(0, |m, x| m | bit(*x));
        Installed {
            seed: SEED.with(|s| s.replace(Some(mix(seed ^ 0x5151_5151)))),
            mutations: MUTATIONS.with(|f| f.replace(mask)),
        }
    }

    impl Drop for Installed {
        fn drop(&mut self) {
            SEED.with(|s| s.set(self.seed));
            MUTATIONS.with(|f| f.set(self.mutations));
        }
    }
}
