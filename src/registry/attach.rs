//! A slot where a higher layer keeps something of its own per instance or
//! per service, living and dying with the registry's live state, without
//! the registry knowing its type: the proxy keeps an instance's idle
//! upstream connections here, and a service's retry budget.
//!
//! This is what lets the registry sit below the proxy: it holds the slot
//! and says when the instance stops taking requests
//! ([`Attachment::release`]); the proxy decides what that means.

use std::any::Any;
use std::fmt;
use std::sync::OnceLock;

/// Something a higher layer attaches to live state.
pub trait Attachment: Any + Send + Sync + fmt::Debug {
    /// The instance takes no new requests, for now (drained, failing its
    /// checks) or for good (removed): let go of what was kept for them.
    fn release(&self) {}

    /// `self`, for the downcast in [`Slot::get`].
    fn as_any(&self) -> &dyn Any;
}

/// Holds at most one [`Attachment`], set on first use.
#[derive(Default)]
pub struct Slot(OnceLock<Box<dyn Attachment>>);

impl Slot {
    /// The attachment, if one of type `T` was set.
    #[inline]
    pub fn get<T: Attachment>(&self) -> Option<&T> {
        self.0.get()?.as_any().downcast_ref()
    }

    /// The attachment of type `T`, set now by `init` if the slot is empty;
    /// `None` if it holds another type (only one layer attaches to a
    /// slot, so that would be a bug).
    #[inline]
    pub fn get_or_init<T: Attachment>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.0
            .get_or_init(|| Box::new(init()))
            .as_any()
            .downcast_ref()
    }

    /// Tells the attachment, if any, to let go of what it keeps.
    pub(crate) fn release(&self) {
        if let Some(a) = self.0.get() {
            a.release();
        }
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.get() {
            Some(a) => a.fmt(f),
            None => f.write_str("empty"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    #[derive(Debug, Default)]
    struct Counter(AtomicUsize);

    impl Attachment for Counter {
        fn release(&self) {
            self.0.fetch_add(1, Relaxed);
        }

        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    #[derive(Debug)]
    struct Other;

    impl Attachment for Other {
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    #[test]
    fn set_once_typed_and_released() {
        let slot = Slot::default();
        assert!(slot.get::<Counter>().is_none());
        slot.release();
        let c = slot.get_or_init(Counter::default).unwrap();
        assert!(std::ptr::eq(c, slot.get::<Counter>().unwrap()));
        let again = slot.get_or_init(|| panic!("set already")).unwrap();
        assert!(std::ptr::eq(c, again));
        slot.release();
        assert_eq!(c.0.load(Relaxed), 1);
        assert!(slot.get::<Other>().is_none(), "another type: none");
        assert!(slot.get_or_init(|| Other).is_none());
    }
}
