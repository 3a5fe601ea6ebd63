//! Riding out a coordinator that goes away (a restart, a crash, a
//! network cut) while a command follows a job: how long and how often to
//! try again ([`Reconnect`]: from 0.5 s doubling to 5 s between tries, for
//! up to [`RECONNECT_FOR`] from the first failure of an outage). Which
//! failures are worth waiting out is the client's to say
//! ([`CallError::is_transient`]).
//!
//! The channel itself reconnects on the next call; this only decides
//! whether to make that call and says what is going on, on stderr.
//!
//! Not here: resuming where the events stopped (`logs::follow` keeps the
//! last event id), connecting (`coordinator::client`).

use std::future::Future;
use std::time::Duration;

use coordinator::client::CallError;
// tokio's clock, so the tests can pause it; the same as std's otherwise.
use tokio::time::Instant;

/// How long a follower keeps trying to reach its coordinator again, from
/// the first failed call of an outage.
pub const RECONNECT_FOR: Duration = Duration::from_secs(120);
/// The wait before the first try again; it doubles up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// The coordinator could not be reached again within [`RECONNECT_FOR`]
/// (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error(
    "lost the coordinator at {url}: no answer for {} s ({last})",
    waited.as_secs()
)]
pub struct CoordinatorLost {
    pub url: String,
    pub waited: Duration,
    /// What the last try got.
    pub last: String,
}

/// The state of reconnecting to one coordinator: between outages it holds
/// nothing; during one, when it began and the next wait.
pub struct Reconnect {
    url: String,
    outage: Option<Outage>,
    limit: Duration,
}

struct Outage {
    since: Instant,
    pause: Duration,
}

impl Reconnect {
    pub fn new(url: &str) -> Reconnect {
        Reconnect {
            url: url.to_string(),
            outage: None,
            limit: RECONNECT_FOR,
        }
    }

    /// After a transient failure: says on `say` that the coordinator was
    /// lost (once per outage), then waits before the next try. An error
    /// once the outage has lasted [`RECONNECT_FOR`].
    pub async fn pause(
        &mut self,
        failed: &CallError,
        say: impl FnOnce(&str),
    ) -> Result<(), CoordinatorLost> {
        let outage = match &mut self.outage {
            Some(outage) => outage,
            None => {
                say(&format!(
                    "lost the coordinator at {} ({}), reconnecting for up to {} s...",
                    self.url,
                    failed.brief(),
                    self.limit.as_secs()
                ));
                self.outage.insert(Outage {
                    since: Instant::now(),
                    pause: FIRST_PAUSE,
                })
            }
        };
        let waited = outage.since.elapsed();
        if waited >= self.limit {
            return Err(CoordinatorLost {
                url: self.url.clone(),
                waited,
                last: failed.brief(),
            });
        }
        let pause = outage.pause.min(self.limit - waited);
        outage.pause = (outage.pause * 2).min(LONGEST_PAUSE);
        tokio::time::sleep(pause).await;
        Ok(())
    }

    /// A call went through: ends an outage, saying so on `say`.
    pub fn reached(&mut self, say: impl FnOnce(&str)) {
        if let Some(outage) = self.outage.take() {
            say(&format!(
                "reconnected to the coordinator at {} after {:.1} s",
                self.url,
                outage.since.elapsed().as_secs_f64()
            ));
        }
    }

    /// Makes `call` until it succeeds or fails in a way that is not
    /// transient (that failure is returned), pausing between tries.
    pub async fn retry<T, F, Fut>(
        &mut self,
        mut call: F,
        say: impl Fn(&str),
    ) -> anyhow::Result<Result<T, CallError>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        loop {
            match call().await {
                Ok(value) => {
                    self.reached(&say);
                    return Ok(Ok(value));
                }
                Err(failed) if failed.is_transient() => self.pause(&failed, &say).await?,
                Err(failed) => return Ok(Err(failed)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    fn down(message: &str) -> CallError {
        CallError::from(Status::unavailable(message))
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_double_to_five_seconds_and_give_up_after_the_bound() {
        let mut reconnect = Reconnect::new("http://c:1");
        let down = down("connection refused");
        let said = std::cell::RefCell::new(Vec::new());
        let start = tokio::time::Instant::now();
        let mut waits = Vec::new();
        let lost = loop {
            let before = tokio::time::Instant::now();
            match reconnect
                .pause(&down, |s| said.borrow_mut().push(s.to_string()))
                .await
            {
                Ok(()) => waits.push(before.elapsed().as_millis()),
                Err(lost) => break lost,
            }
        };
        assert_eq!(&waits[..5], &[500, 1000, 2000, 4000, 5000]);
        assert!(waits.iter().all(|&w| w <= 5000));
        assert_eq!(start.elapsed().as_secs(), 120);
        assert_eq!(said.borrow().len(), 1, "{said:?}");
        assert!(said.borrow()[0].contains("reconnecting for up to 120 s"));
        assert!(lost.to_string().contains("no answer for 120 s"), "{lost}");
        assert!(lost.to_string().contains("connection refused"), "{lost}");
    }

    #[tokio::test(start_paused = true)]
    async fn each_outage_gets_the_whole_bound() {
        let mut reconnect = Reconnect::new("http://c:1");
        let down = down("connection refused");
        reconnect.pause(&down, |_| {}).await.unwrap();
        tokio::time::advance(Duration::from_secs(100)).await;
        reconnect.reached(|_| {});
        // A long stream later, the next outage starts from zero.
        tokio::time::advance(Duration::from_secs(300)).await;
        let mut said = Vec::new();
        reconnect
            .pause(&down, |s| said.push(s.to_string()))
            .await
            .expect("a new outage is not lost at once");
        assert_eq!(said.len(), 1, "{said:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_goes_through_ends_the_outage() {
        let mut reconnect = Reconnect::new("http://c:1");
        let said = std::cell::RefCell::new(Vec::new());
        let say = |s: &str| said.borrow_mut().push(s.to_string());
        let mut tries = 0;
        let answer = reconnect
            .retry(
                || {
                    tries += 1;
                    let outcome = if tries < 3 { Err(down("down")) } else { Ok(7) };
                    async move { outcome }
                },
                say,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, 7);
        assert_eq!(said.borrow().len(), 2, "{said:?}");
        assert!(said.borrow()[1].starts_with("reconnected"), "{said:?}");
        let refused = reconnect
            .retry(
                || async { Err::<(), _>(CallError::from(Status::not_found("no job j-9"))) },
                |_| {},
            )
            .await
            .unwrap();
        assert_eq!(
            refused.unwrap_err().kind(),
            coordinator::client::ErrorKind::NotFound
        );
    }
}
