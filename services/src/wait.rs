//! Waiting until something is ready: a server accepting connections, a cluster settling, a
//! balancer seeing its backends, a service answering `GET /ready`. One loop for all of them: it
//! looks at a steady pace, stops at its deadline, and the error says what it saw last.

use std::time::{Duration, Instant};

/// What one look found.
pub(crate) enum Look<T, S> {
    /// Ready: the wait is over, with this.
    Ready(T),
    /// Not yet, and this is what it looked like (for the error, should time run out).
    NotYet(S),
}

impl Look<(), ()> {
    /// Ready when `ready` is true; a look with nothing more to say.
    pub(crate) fn when(ready: bool) -> Self {
        if ready { Self::Ready(()) } else { Self::NotYet(()) }
    }
}

/// Look every `every` until `look` finds it ready, or until `limit` has passed: then the error is
/// what `timed_out` makes of the last thing seen. An error from `look` ends the wait at once (a
/// process that exited will not become ready).
pub(crate) async fn until<T, S>(
    limit: Duration,
    every: Duration,
    mut look: impl AsyncFnMut() -> anyhow::Result<Look<T, S>>,
    timed_out: impl FnOnce(S) -> anyhow::Error,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        match look().await? {
            Look::Ready(value) => return Ok(value),
            Look::NotYet(seen) if Instant::now() > deadline => return Err(timed_out(seen)),
            Look::NotYet(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Try `attempt` every `every` until it succeeds, or until `limit` has passed: then its last
/// error (e.g. connecting to a server that is still starting).
pub(crate) async fn until_ok<T, E>(
    limit: Duration,
    every: Duration,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + limit;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_looks_until_ready_and_returns_what_it_found() {
        let mut looks = 0;
        let found = until(
            Duration::from_secs(1),
            Duration::from_millis(10),
            async || {
                looks += 1;
                Ok(if looks == 3 { Look::Ready("ready") } else { Look::NotYet(looks) })
            },
            |_| unreachable!("ready in time"),
        )
        .await;
        assert_eq!(found.unwrap(), "ready");
        assert_eq!(looks, 3);
    }

    #[tokio::test]
    async fn a_wait_that_runs_out_of_time_says_what_it_saw_last() {
        let started = Instant::now();
        let mut looks = 0;
        let error = until(
            Duration::from_millis(100),
            Duration::from_millis(10),
            async || -> anyhow::Result<Look<(), u32>> {
                looks += 1;
                Ok(Look::NotYet(looks))
            },
            |last| anyhow::anyhow!("not ready; last look: {last}"),
        )
        .await
        .unwrap_err();
        assert!(error.to_string().starts_with("not ready; last look: "), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn an_error_ends_the_wait_at_once() {
        let mut looks = 0;
        let error = until(
            Duration::from_secs(10),
            Duration::from_millis(10),
            async || -> anyhow::Result<Look<(), ()>> {
                looks += 1;
                anyhow::bail!("it exited")
            },
            |()| unreachable!("not a time-out"),
        )
        .await
        .unwrap_err();
        assert_eq!(error.to_string(), "it exited");
        assert_eq!(looks, 1);
    }

    #[tokio::test]
    async fn an_attempt_is_retried_until_it_succeeds_or_time_runs_out() {
        let mut attempts = 0;
        let ok: Result<u32, String> = until_ok(Duration::from_secs(1), Duration::from_millis(10), async || {
            attempts += 1;
            if attempts < 4 { Err(format!("attempt {attempts} refused")) } else { Ok(attempts) }
        })
        .await;
        assert_eq!(ok, Ok(4));

        let failed: Result<(), String> =
            until_ok(Duration::from_millis(50), Duration::from_millis(10), async || Err("refused".to_owned())).await;
        assert_eq!(failed, Err("refused".to_owned()));
    }
}
