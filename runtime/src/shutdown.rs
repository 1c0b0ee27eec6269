//! The shutdown token every task of a program watches.
//!
//! One `tokio_util::sync::CancellationToken` rather than a `watch<bool>`: cloning is
//! cheap, child tokens stop one part (a source, a target) without stopping the rest,
//! `cancelled()` is a plain future for `select!` (no "sender dropped" case and no
//! `borrow()` to forget), and a `DropGuard` cancels when a task unwinds. Programs use
//! it through this re-export, so the runtime owns the tokio-util version.

pub use tokio_util::sync::{
    CancellationToken, DropGuard, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};

/// A `watch<bool>` that turns `true` when `token` is cancelled, for code not yet moved
/// to the token (it keeps working while the programs adopt the runtime).
pub fn watch_of(token: &CancellationToken) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(token.is_cancelled());
    let token = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = token.cancelled() => { let _ = tx.send(true); }
            // Every receiver is gone: nobody to tell.
            _ = tx.closed() => {}
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_watch_follows_the_token() {
        let token = CancellationToken::new();
        let mut rx = watch_of(&token);
        assert!(!*rx.borrow());
        let child = token.child_token();
        token.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(|s| *s))
            .await
            .expect("the watch turns true")
            .unwrap();
        assert!(child.is_cancelled(), "children stop with their parent");
        let late = watch_of(&token);
        assert!(*late.borrow(), "already cancelled: true from the start");
    }
}
