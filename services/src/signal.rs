//! How the checker and the load test learn that they must stop and clean up.

/// The first of SIGINT (Ctrl-C), SIGTERM and SIGHUP, named for the message that says why
/// everything the tool started was stopped.
pub async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hangup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
        let _ = tokio::signal::ctrl_c().await;
        return "interrupted";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
        _ = hangup.recv() => "hung up",
    }
}
