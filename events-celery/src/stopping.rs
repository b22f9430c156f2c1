//! Waiting that gives way to the worker's stop signal (a `watch` channel that turns `true`).

use std::time::Duration;

use tokio::sync::watch;

/// Resolves once the worker is asked to stop.
pub(crate) async fn stopped(stopping: &mut watch::Receiver<bool>) {
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        if stopping.changed().await.is_err() {
            return;
        }
    }
}

/// Waits `delay`, or less if the worker is stopping; returns whether it is stopping.
pub(crate) async fn pause(stopping: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    if *stopping.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stopping.borrow(),
        _ = stopping.changed() => true,
    }
}
