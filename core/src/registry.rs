//! The registry of `#[dtask]` functions a worker can run.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;

use crate::dtask::Call;
use crate::error::{Error, Failure};
use crate::exec::{MigrateFn, Model, Resume};
use crate::step::BodyFuture;

/// What `#[dtask]` submits for each function. Not for direct use.
#[doc(hidden)]
pub struct Registration {
    pub(crate) name: &'static str,
    pub(crate) rust_path: &'static str,
    pub(crate) type_id: fn() -> TypeId,
    pub(crate) run: Model,
}

impl Registration {
    #[doc(hidden)]
    pub const fn new(
        name: &'static str,
        rust_path: &'static str,
        type_id: fn() -> TypeId,
        run: fn(&[u8]) -> Result<BodyFuture, Failure>,
    ) -> Self {
        Self {
            name,
            rust_path,
            type_id,
            run: Model::Replay(run),
        }
    }

    /// The registration of a `#[dtask(snapshot)]` function.
    #[doc(hidden)]
    pub const fn snapshot(
        name: &'static str,
        rust_path: &'static str,
        type_id: fn() -> TypeId,
        run: fn(&[u8], Option<Resume<'_>>) -> Result<BodyFuture, Failure>,
        fingerprint: u64,
        accepts: &'static [u64],
    ) -> Self {
        Self::snapshot_migrating(name, rust_path, type_id, run, fingerprint, accepts, &[])
    }

    /// The registration of a `#[dtask(snapshot)]` function that migrates machines saved
    /// by earlier code (`migrate(from = "...", with = f)`).
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub const fn snapshot_migrating(
        name: &'static str,
        rust_path: &'static str,
        type_id: fn() -> TypeId,
        run: fn(&[u8], Option<Resume<'_>>) -> Result<BodyFuture, Failure>,
        fingerprint: u64,
        accepts: &'static [u64],
        migrations: &'static [(u64, MigrateFn)],
    ) -> Self {
        Self {
            name,
            rust_path,
            type_id,
            run: Model::Snapshot {
                run,
                fingerprint,
                accepts,
                migrations,
            },
        }
    }
}

inventory::collect!(Registration);

/// The `#[dtask]` functions a worker runs, by name.
///
/// ```
/// # use dtasks::{dtask, Registry};
/// #[dtask]
/// async fn double(x: u64) -> u64 { x * 2 }
///
/// let mut registry = Registry::new();
/// registry.register(double).unwrap();
/// assert!(registry.contains("double"));
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    by_name: HashMap<&'static str, &'static Registration>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("Registry").field("names", &names).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `#[dtask]` function linked into this binary.
    ///
    /// Fails when two of them share a name.
    pub fn all() -> Result<Self, Error> {
        let mut r = Self::new();
        for reg in inventory::iter::<Registration> {
            r.insert(reg)?;
        }
        Ok(r)
    }

    /// Adds the `#[dtask]` function `f` (pass the function itself: `register(charge)`).
    ///
    /// Fails when `f` was not declared with `#[dtask]`, or when another function is
    /// registered under the same name.
    pub fn register<F, M>(&mut self, f: F) -> Result<&mut Self, Error>
    where
        F: DTaskFn<M>,
    {
        let _ = f;
        let id = TypeId::of::<F>();
        let reg = inventory::iter::<Registration>
            .into_iter()
            .find(|r| (r.type_id)() == id)
            .ok_or_else(|| {
                Error::config(format!(
                    "`{}` is not a #[dtask] function",
                    std::any::type_name::<F>()
                ))
            })?;
        self.insert(reg)?;
        Ok(self)
    }

    /// Adds the `#[dtask]` function registered under `name`.
    pub fn register_name(&mut self, name: &str) -> Result<&mut Self, Error> {
        let mut found = inventory::iter::<Registration>
            .into_iter()
            .filter(|r| r.name == name);
        let reg = found.next().ok_or_else(|| Error::unknown_dtask(name))?;
        self.insert(reg)?;
        for other in found {
            self.insert(other)?;
        }
        Ok(self)
    }

    fn insert(&mut self, reg: &'static Registration) -> Result<(), Error> {
        if let Some(existing) = self.by_name.get(reg.name) {
            if !std::ptr::eq(*existing, reg) && existing.rust_path != reg.rust_path {
                return Err(Error::config(format!(
                    "two DTasks are named `{}`: `{}` and `{}`; rename one with #[dtask(name = \"...\")]",
                    reg.name, existing.rust_path, reg.rust_path
                )));
            }
        }
        self.by_name.insert(reg.name, reg);
        Ok(())
    }

    /// Whether a DTask named `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_name.keys().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    /// Merges `other` into this registry.
    pub fn extend(&mut self, other: &Registry) -> Result<(), Error> {
        for reg in other.by_name.values() {
            self.insert(reg)?;
        }
        Ok(())
    }

    /// The fingerprint of the code registered as `name` when it is a
    /// `#[dtask(snapshot)]` function (what its suspended instances record, see
    /// [`Client::fingerprints`](crate::Client::fingerprints)); `None` for a replay-model
    /// DTask or an unknown name.
    pub fn fingerprint(&self, name: &str) -> Option<u64> {
        match self.by_name.get(name)?.run {
            Model::Snapshot { fingerprint, .. } => Some(fingerprint),
            Model::Replay(_) => None,
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'static Registration> {
        self.by_name.get(name).copied()
    }
}

/// Implemented by the functions `#[dtask]` generates: functions of serde arguments that
/// return a [`Call`]. `M` is a marker for the signature.
pub trait DTaskFn<M>: sealed::Sealed<M> + 'static {}

mod sealed {
    pub trait Sealed<M> {}
}

macro_rules! impl_dtask_fn {
    ($($a:ident),*) => {
        impl<Func, R, $($a),*> sealed::Sealed<fn($($a),*) -> R> for Func where Func: Fn($($a),*) -> Call<R> + 'static {}
        impl<Func, R, $($a),*> DTaskFn<fn($($a),*) -> R> for Func where Func: Fn($($a),*) -> Call<R> + 'static {}
    };
}

impl_dtask_fn!();
impl_dtask_fn!(A1);
impl_dtask_fn!(A1, A2);
impl_dtask_fn!(A1, A2, A3);
impl_dtask_fn!(A1, A2, A3, A4);
impl_dtask_fn!(A1, A2, A3, A4, A5);
impl_dtask_fn!(A1, A2, A3, A4, A5, A6);
impl_dtask_fn!(A1, A2, A3, A4, A5, A6, A7);
impl_dtask_fn!(A1, A2, A3, A4, A5, A6, A7, A8);
impl_dtask_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9);
impl_dtask_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10);
impl_dtask_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11);
impl_dtask_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12);
