//! Calls that change the pod run to their end, whatever happens to the
//! request.
//!
//! ttrpc drops a call's future at the deadline containerd gives it (the
//! server wraps each handler in a timeout), and containerd gives
//! `Shutdown` 3 s. A pod whose guest took longer to power off had its
//! `Shutdown` dropped half-way, after the VM was taken out of the state
//! but before the exit signal: the shim never exited (seen in the nested
//! lane, where the guest is slow). So each call that changes state runs on
//! a task of its own; a dropped request only stops the waiting for it.
//! Calls that only read (`State`, `Pids`, `Stats`, `Connect`) and `Wait`,
//! which is meant to be dropped, go straight through.
//!
//! (No crate does this: containerd-shim's own services are written as if
//! their calls were never dropped.)

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::TtrpcResult;

use super::err;

/// A [`Task`] service whose state-changing calls finish even when their
/// request is dropped.
#[derive(Clone)]
pub struct Uncancelled<T>(pub T);

/// A copy of the request's context for the call's own task.
fn own(ctx: &TtrpcContext) -> TtrpcContext {
    TtrpcContext {
        mh: ctx.mh,
        metadata: ctx.metadata.clone(),
        timeout_nano: ctx.timeout_nano,
    }
}

/// Runs `$call` of the wrapped service on a task of its own and waits for
/// it.
macro_rules! to_the_end {
    ($self:ident, $call:ident, $ctx:ident, $req:ident) => {{
        let service = $self.0.clone();
        let ctx = own($ctx);
        tokio::spawn(async move { service.$call(&ctx, $req).await })
            .await
            .unwrap_or_else(|e| {
                Err(err(
                    Code::INTERNAL,
                    format!("the {} call's task failed: {e}", stringify!($call)),
                ))
            })
    }};
}

#[async_trait]
impl<T: Task + Clone + Send + Sync + 'static> Task for Uncancelled<T> {
    async fn state(
        &self,
        ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        self.0.state(ctx, req).await
    }

    async fn create(
        &self,
        ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        to_the_end!(self, create, ctx, req)
    }

    async fn start(
        &self,
        ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        to_the_end!(self, start, ctx, req)
    }

    async fn delete(
        &self,
        ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        to_the_end!(self, delete, ctx, req)
    }

    async fn pids(
        &self,
        ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        self.0.pids(ctx, req).await
    }

    async fn pause(&self, ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        to_the_end!(self, pause, ctx, req)
    }

    async fn resume(&self, ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        to_the_end!(self, resume, ctx, req)
    }

    async fn checkpoint(
        &self,
        ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        to_the_end!(self, checkpoint, ctx, req)
    }

    async fn kill(&self, ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        to_the_end!(self, kill, ctx, req)
    }

    async fn exec(
        &self,
        ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        to_the_end!(self, exec, ctx, req)
    }

    async fn resize_pty(
        &self,
        ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        to_the_end!(self, resize_pty, ctx, req)
    }

    async fn close_io(
        &self,
        ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        to_the_end!(self, close_io, ctx, req)
    }

    async fn update(
        &self,
        ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        to_the_end!(self, update, ctx, req)
    }

    async fn wait(
        &self,
        ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        self.0.wait(ctx, req).await
    }

    async fn stats(
        &self,
        ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        self.0.stats(ctx, req).await
    }

    async fn connect(
        &self,
        ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        self.0.connect(ctx, req).await
    }

    async fn shutdown(
        &self,
        ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        to_the_end!(self, shutdown, ctx, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A service whose `Shutdown` takes 200 ms, then records that it ended;
    /// its `Wait` never ends.
    #[derive(Clone, Default)]
    struct Slow(Arc<AtomicBool>);

    #[async_trait]
    impl Task for Slow {
        async fn shutdown(
            &self,
            _ctx: &TtrpcContext,
            _req: api::ShutdownRequest,
        ) -> TtrpcResult<api::Empty> {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.0.store(true, Ordering::SeqCst);
            Ok(api::Empty::default())
        }

        async fn wait(
            &self,
            _ctx: &TtrpcContext,
            _req: api::WaitRequest,
        ) -> TtrpcResult<api::WaitResponse> {
            std::future::pending().await
        }
    }

    fn ctx() -> TtrpcContext {
        TtrpcContext {
            mh: Default::default(),
            metadata: Default::default(),
            timeout_nano: 10_000_000,
        }
    }

    /// What ttrpc's server does at a call's deadline: drop its future.
    #[tokio::test]
    async fn a_dropped_shutdown_still_runs_to_its_end() {
        let slow = Slow::default();
        let service = Uncancelled(slow.clone());
        let c = ctx();
        let dropped = tokio::time::timeout(
            Duration::from_millis(10),
            service.shutdown(&c, api::ShutdownRequest::default()),
        )
        .await;
        assert!(dropped.is_err(), "the call ended before its deadline");
        assert!(!slow.0.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            slow.0.load(Ordering::SeqCst),
            "the dropped Shutdown did not run to its end"
        );
        // Without the wrapper the same drop stops it half-way: what the
        // test above guards against.
        let bare = Slow::default();
        let dropped = tokio::time::timeout(
            Duration::from_millis(10),
            bare.shutdown(&c, api::ShutdownRequest::default()),
        )
        .await;
        assert!(dropped.is_err());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!bare.0.load(Ordering::SeqCst));
    }

    /// A call that is meant to be dropped (`Wait`) is not left running:
    /// nothing holds the service once the request is gone.
    #[tokio::test]
    async fn a_dropped_wait_leaves_nothing_running() {
        let flag = Arc::new(AtomicBool::new(false));
        let service = Uncancelled(Slow(flag.clone()));
        let c = ctx();
        let waited = tokio::time::timeout(
            Duration::from_millis(50),
            service.wait(&c, api::WaitRequest::default()),
        )
        .await;
        assert!(waited.is_err());
        tokio::task::yield_now().await;
        assert_eq!(
            Arc::strong_count(&flag),
            2,
            "a task still holds the service"
        );
    }
}
