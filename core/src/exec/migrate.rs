//! Migrations of saved snapshot machines: `#[dtask(snapshot, migrate(from = "<fingerprint>",
//! with = f))]` resumes an instance suspended by the code `from` after `f` rewrote its saved
//! locals (and the await it stands at) for the new code.

use std::fmt;
use std::io::Cursor;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

/// A migration declared with `migrate(.., with = f)`: the machine the old code saved, to the
/// machine the new code resumes, or why it cannot be migrated.
pub type MigrateFn = fn(SavedMachine) -> Result<SavedMachine, String>;

/// A suspended snapshot machine as a migration sees it: the await it stands at and the
/// locals saved there.
///
/// The awaits of a `#[dtask(snapshot)]` function that can suspend are its distributed
/// awaits, numbered from 0 in the order they appear in the source; at each, the machine
/// saves the locals (arguments included) that the code after it still uses, in the order
/// they are declared. A migration reads them into a struct or tuple of its own whose
/// fields are those locals in that order ([`SavedMachine::locals`]), and builds the machine
/// of the new code the same way ([`SavedMachine::new`]).
///
/// ```
/// use dtasks::SavedMachine;
/// use serde::{Deserialize, Serialize};
///
/// /// What the old code saved at its only await: the customer and the amount.
/// #[derive(Deserialize)]
/// struct Old {
///     customer: String,
///     amount: u64,
/// }
///
/// /// The new code also keeps a currency across that await.
/// #[derive(Serialize)]
/// struct New {
///     customer: String,
///     amount: u64,
///     currency: String,
/// }
///
/// fn add_currency(old: SavedMachine) -> Result<SavedMachine, String> {
///     let Old { customer, amount } = old.locals()?;
///     let currency = "EUR".to_string();
///     SavedMachine::new(old.point(), &New { customer, amount, currency })
/// }
///
/// let old = SavedMachine::new(0, &("ada".to_string(), 42u64))?;
/// let new = add_currency(old)?;
/// let (c, a, cur): (String, u64, String) = new.locals()?;
/// assert_eq!((c.as_str(), a, cur.as_str()), ("ada", 42, "EUR"));
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SavedMachine {
    point: u32,
    /// The saved locals, consecutive MessagePack values (as the state keeps them).
    locals: Vec<u8>,
}

impl fmt::Debug for SavedMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SavedMachine")
            .field("point", &self.point)
            .field("locals", &format_args!("{} bytes", self.locals.len()))
            .finish()
    }
}

impl SavedMachine {
    pub(crate) fn from_parts(point: u32, locals: Vec<u8>) -> Self {
        Self { point, locals }
    }

    pub(crate) fn into_parts(self) -> (u32, Vec<u8>) {
        (self.point, self.locals)
    }

    /// The machine standing at await `point` with `locals`: a struct or tuple whose fields
    /// are the locals the code saves at that await, in the order they are declared (`()`
    /// when it saves none). An error when `locals` cannot be encoded.
    pub fn new<T: Serialize>(point: u32, locals: &T) -> Result<Self, String> {
        let bytes = rmp_serde::to_vec(locals).map_err(|e| format!("locals: {e}"))?;
        let locals = match bytes.first() {
            // `()`: nothing saved.
            Some(0xc0) if bytes.len() == 1 => Vec::new(),
            _ => {
                let mut rd = &bytes[..];
                rmp::decode::read_array_len(&mut rd).map_err(|_| {
                    "the locals of a machine are a struct or a tuple of them".to_string()
                })?;
                rd.to_vec()
            }
        };
        Ok(Self { point, locals })
    }

    /// The index of the await the machine stands at.
    pub fn point(&self) -> u32 {
        self.point
    }

    /// How many locals are saved.
    pub fn len(&self) -> usize {
        let mut de = rmp_serde::Deserializer::new(Cursor::new(&self.locals[..]));
        let mut n = 0;
        while (de.get_ref().position() as usize) < self.locals.len() {
            if IgnoredAny::deserialize(&mut de).is_err() {
                break;
            }
            n += 1;
        }
        n
    }

    /// Whether no local is saved.
    pub fn is_empty(&self) -> bool {
        self.locals.is_empty()
    }

    /// The saved locals as `T`: a struct or tuple whose fields are the locals, in the order
    /// the function declares them. An error naming the await when they do not decode.
    pub fn locals<T: DeserializeOwned>(&self) -> Result<T, String> {
        let mut bytes = Vec::with_capacity(self.locals.len() + 5);
        rmp::encode::write_array_len(&mut bytes, self.len() as u32).map_err(|e| e.to_string())?;
        bytes.extend_from_slice(&self.locals);
        rmp_serde::from_slice(&bytes).map_err(|e| {
            format!(
                "the {} locals saved at await {} do not decode as {}: {e}",
                self.len(),
                self.point,
                std::any::type_name::<T>()
            )
        })
    }
}
