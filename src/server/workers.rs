//! The connection workers: one single-threaded tokio runtime per core, each owning the
//! connections handed to it from accept to close.
//!
//! nginx runs one worker process per core and HAProxy one thread per core, and for the
//! same reason: a connection that stays on one thread never has its task, its sockets'
//! readiness or its buffers moved between cores. tokio's work-stealing runtime moves
//! them freely; measured on the benchmark's 64 B echo (2 cores, shared with the client
//! and the upstream), wssd spent ~7.5 µs of CPU per relayed message on the work-stealing
//! runtime with 2 workers and ~6.4 µs with 1, against nginx's ~6.8 µs. Workers keep the
//! second figure and still use every core.
//!
//! The accept loop runs on the first worker and hands each admitted socket to the worker
//! with the fewest connections; the socket is registered with that worker's reactor, so
//! its readiness events, timers and task all live on one thread. Everything else
//! (certificate watching, ACME, the admin endpoints) runs on the agent's runtime.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The worker threads; dropping this stops them, and with them any connection still open.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    connections: Arc<AtomicUsize>,
    /// Dropped (or sent) to stop the worker's runtime.
    _stop: oneshot::Sender<()>,
}

/// A worker chosen for one connection: where to spawn it, and a count to hold while it
/// runs.
pub struct Assigned {
    /// 0 is the worker the accept loop runs on.
    pub index: usize,
    pub handle: Handle,
    pub load: Load,
}

/// One connection on a worker's count, until dropped.
pub struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How far ahead [`keep_a_timer_armed`] keeps a timer: less than any timeout that is
/// set per request (hyper's header-read timeout is `handshake_timeout`, 10 s by default).
const TIMER_ANCHOR: Duration = Duration::from_secs(1);

/// Keeps one timer pending on the worker at all times, at most [`TIMER_ANCHOR`] away.
///
/// tokio's timer wakes its driver (an eventfd write, even from the driver's own thread)
/// whenever a new timer is due before the earliest one it knew of when it last parked, or
/// when it knew of none. hyper starts a header-read timer for every keep-alive request;
/// with the worker's other connections busy in requests, the wheel was often empty, and
/// measured on the HTTP/1.1 benchmark (50 keep-alive clients, 2 workers) that was 0.25
/// eventfd writes per request. With this timer pending, every later one is due after it
/// and wakes nothing (< 0.001 writes per request). It costs one wake-up a second.
async fn keep_a_timer_armed() {
    loop {
        tokio::time::sleep(TIMER_ANCHOR).await;
    }
}

impl Workers {
    /// Starts `count` worker threads (at least one), named `wssd-conn-N`.
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut workers = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("wssd-conn-{i}"))
                .spawn(move || {
                    // Either a send or the sender's drop ends the wait; the runtime is
                    // then dropped on its own thread, closing what is left.
                    runtime.block_on(async {
                        tokio::select! {
                            _ = stopped => {}
                            _ = keep_a_timer_armed() => {}
                        }
                    });
                })?;
            workers.push(Worker {
                handle,
                connections: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Workers { workers })
    }

    /// The worker with the fewest connections (WebSocket connections live long, so a
    /// round robin would leave one worker with the survivors of the other's churn).
    pub fn assign(&self) -> Assigned {
        let (index, worker) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.connections.load(Ordering::Relaxed))
            .unwrap_or((0, &self.workers[0]));
        worker.connections.fetch_add(1, Ordering::Relaxed);
        Assigned {
            index,
            handle: worker.handle.clone(),
            load: Load(worker.connections.clone()),
        }
    }

    /// The first worker's runtime (where the accept loop runs).
    pub fn first(&self) -> &Handle {
        &self.workers[0].handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Workers {
        /// How many connections each worker holds, in worker order.
        fn loads(&self) -> Vec<usize> {
            self.workers
                .iter()
                .map(|w| w.connections.load(Ordering::Relaxed))
                .collect()
        }
    }

    #[test]
    fn each_connection_goes_to_the_least_loaded_worker() {
        let workers = Workers::start(2).unwrap();
        let a = workers.assign();
        let b = workers.assign();
        assert_eq!(workers.loads(), vec![1, 1]);
        let c = workers.assign();
        assert_eq!(workers.loads(), vec![2, 1]);
        drop(a);
        drop(c);
        // Worker 0 lost both of its connections: the next two go there.
        let d = workers.assign();
        let e = workers.assign();
        assert_eq!(workers.loads(), vec![2, 1]);
        drop((b, d, e));
        assert_eq!(workers.loads(), vec![0, 0]);
    }

    #[test]
    fn a_connection_runs_on_its_worker_thread_and_stops_with_the_workers() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let assigned = workers.assign();
            let tx = tx.clone();
            assigned.handle.spawn(async move {
                let _load = assigned.load;
                let name = std::thread::current().name().map(str::to_owned);
                tx.send(name).unwrap();
                std::future::pending::<()>().await;
            });
        }
        let mut names: Vec<_> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["wssd-conn-0", "wssd-conn-1"]);
        assert_eq!(workers.loads(), vec![1, 1]);
        // Stopping the workers drops the tasks still running, and their loads with them.
        let counts: Vec<_> = workers
            .workers
            .iter()
            .map(|w| w.connections.clone())
            .collect();
        drop(workers);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while counts.iter().any(|c| c.load(Ordering::Relaxed) != 0) {
            assert!(std::time::Instant::now() < deadline, "tasks not dropped");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    use std::time::Duration;
}
