//! Keeping sled's panic at close from reaching the embedder.
//!
//! sled 0.34.7 closes its log when the last handle of a database (a `Db` or any `Tree`) is
//! dropped, and that `Drop` ends with `sync_all().unwrap()` (`pagecache/logger.rs:467`): a
//! failing `fsync` (EIO, ENOSPC) at that moment panics, in whatever thread drops the last
//! handle, and a panic inside a `Drop` that runs while another panic unwinds aborts the process.
//! Reproduced with `strace -f -e inject=fsync:error=EIO:when=N+` around the quickstart: every N
//! up to the last sync at close panicked before this module existed.
//!
//! So every sled handle the store holds is a [`Contained`] one, whose `Drop` runs sled's inside
//! `catch_unwind`, with the panic's message kept from the process's panic hook and logged
//! instead (`tracing::error!`). Nothing is lost by it: what the store acknowledged is in its
//! write-ahead log, which the next open replays; a sync failing at close only means sled's copy
//! is older than the log, which is how every crash leaves it.
//!
//! The quiet hook is installed once per process, the first time a store opens, and passes every
//! other panic to the hook that was there before it. An embedder that sets its own hook later
//! replaces it: sled's panic is then still caught (nothing unwinds into the caller), but its
//! message is printed by that hook. Under `panic = "abort"` nothing can be caught; sled aborts.

use std::cell::{Cell, RefCell};
use std::ops::Deref;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while a contained drop runs on this thread: the hook keeps its panic's message here.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Installs, once, a panic hook that keeps the message of a panic raised inside
/// [`drop_contained`] and hands every other panic to the previous hook.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                CAUGHT.with(|c| *c.borrow_mut() = Some(info.to_string()));
            } else {
                previous(info);
            }
        }));
    });
}

/// A sled handle (or anything else that may panic when dropped) whose drop is contained: see
/// the [module docs](self). Reads go through `Deref`.
#[derive(Debug)]
pub(crate) struct Contained<T> {
    value: Option<T>,
    what: &'static str,
}

impl<T> Contained<T> {
    /// Wraps `value`; `what` names it in the error logged if its drop panics.
    pub(crate) fn new(value: T, what: &'static str) -> Self {
        install_hook();
        Contained { value: Some(value), what }
    }
}

impl<T: Clone> Clone for Contained<T> {
    fn clone(&self) -> Self {
        Contained { value: self.value.clone(), what: self.what }
    }
}

impl<T> Deref for Contained<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // `value` is only taken in `drop`, after which nothing can deref.
        self.value.as_ref().expect("a contained value is present until it is dropped")
    }
}

impl<T> Drop for Contained<T> {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            drop_contained(value, self.what);
        }
    }
}

/// Drops `value`, catching a panic of its `Drop` and logging it instead. Returns whether it
/// panicked. Inside another panic's unwinding it just drops (catching is not possible there).
pub(crate) fn drop_contained<T>(value: T, what: &str) -> bool {
    if std::thread::panicking() {
        drop(value);
        return false;
    }
    install_hook();
    let was_quiet = QUIET.with(|q| q.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(move || drop(value)));
    QUIET.with(|q| q.set(was_quiet));
    match result {
        Ok(()) => false,
        Err(_) => {
            let message = readable(&CAUGHT.with(|c| c.borrow_mut().take()).unwrap_or_default());
            tracing::error!(
                what,
                panic = %message,
                "sled failed while closing (a failing fsync at close); the write-ahead log holds \
                 everything acknowledged and the next open replays it"
            );
            true
        }
    }
}

/// A panic message with the `Debug` form of an OS error (`Os { code: 28, kind: StorageFull,
/// message: "No space left on device" }`, what `unwrap()` prints) given as a sentence instead.
fn readable(message: &str) -> String {
    let Some(at) = message.find("Os { code: ") else { return message.to_owned() };
    let rest = &message[at + "Os { code: ".len()..];
    let code: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let (Ok(code), Some(end)) = (code.parse::<i32>(), rest.find('}')) else {
        return message.to_owned();
    };
    let error = std::io::Error::from_raw_os_error(code);
    format!("{}{error}{}", &message[..at], &rest[end + 1..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn os_errors_in_panic_messages_read_as_sentences() {
        let debug = "called `Result::unwrap()` on an `Err` value: Os { code: 28, kind: \
                     StorageFull, message: \"No space left on device\" }";
        assert_eq!(
            super::readable(debug),
            "called `Result::unwrap()` on an `Err` value: No space left on device (os error 28)"
        );
        assert_eq!(super::readable("plain"), "plain");
    }

    use super::*;

    struct Bomb;

    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("sync_all failed");
        }
    }

    #[test]
    fn a_panicking_drop_is_caught_and_reported() {
        assert!(drop_contained(Bomb, "a bomb"));
        assert!(!drop_contained(String::from("fine"), "a string"));
        let contained = Contained::new(Bomb, "a contained bomb");
        drop(contained);
        // The hook is quiet again: a later panic elsewhere still reaches the previous hook (not
        // observable here without replacing it, so check the flag).
        assert!(!QUIET.with(Cell::get));
    }
}
