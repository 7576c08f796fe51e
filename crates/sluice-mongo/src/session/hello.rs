//! Sluice's own `hello`, and the awaitable hello of the streaming monitoring protocol
//! (Server Monitoring spec, "Streaming protocol"): a hello carrying the client's
//! `topologyVersion` and `maxAwaitTimeMS` is answered after that time (or at once when
//! the version is no longer current, or as soon as it stops being so); with
//! `exhaustAllowed` the answers keep coming, each with `moreToCome`, one per
//! `maxAwaitTimeMS`, until the client leaves. None of it holds an upstream connection.

use bson::Document;

use super::read::Activity;
use super::{to_bytes, MongoSessionError, Session};
use crate::hello::{gossip_cluster_time, hello_reply, HelloRequest, TopologyVersion};
use crate::wire::{encode_op_msg, error_doc, flags, ErrorCode, OpMsg};

/// How an awaitable hello's wait ended.
enum Awaited {
    /// Time to answer: the wait is over, the topology changed, or none was due.
    Answer,
    /// Shutdown began: answer with `ShutdownInProgress` (mongos's quiesce mode), so that
    /// the driver stops using this router at once.
    Shutdown,
    /// The client sent a request instead of waiting: answer, and end any stream.
    Interrupted,
    /// The client closed the connection: nothing to answer.
    Gone,
}

impl Session {
    /// A hello in an OP_MSG: answered once, or streamed when the client allows it.
    pub(super) async fn hello_msg(
        &mut self,
        request_id: i32,
        msg: &OpMsg<'_>,
    ) -> Result<(), MongoSessionError> {
        let req = HelloRequest::parse(msg.command_name(), msg.body);
        let more_to_come = msg.more_to_come();
        if !more_to_come && msg.flags & flags::EXHAUST_ALLOWED != 0 && req.await_for.is_some() {
            return self.stream_hello(request_id, req).await;
        }
        match self.hello(&req).await {
            Some(reply) if !more_to_come => self.reply(request_id, &reply).await,
            // Nothing to answer: the request wanted no reply, or the client left during
            // an awaitable hello.
            _ => Ok(()),
        }
    }

    /// The answer to a hello, after the wait an awaitable one asks for; `None` when the
    /// client left during that wait.
    pub(super) async fn hello(&mut self, req: &HelloRequest) -> Option<Document> {
        match self.await_hello(req).await {
            Awaited::Answer | Awaited::Interrupted => Some(self.hello_now(req).await.0),
            Awaited::Shutdown => Some(shutting_down()),
            Awaited::Gone => None,
        }
    }

    /// A streamed hello (`exhaustAllowed` with `topologyVersion` and `maxAwaitTimeMS`):
    /// answers with `moreToCome` after every wait, each answer replying to the one before,
    /// until the client leaves, sends something, or shutdown ends the stream.
    pub(super) async fn stream_hello(
        &mut self,
        request_id: i32,
        mut req: HelloRequest,
    ) -> Result<(), MongoSessionError> {
        let mut reply_to = request_id;
        loop {
            let ((doc, shown), last) = match self.await_hello(&req).await {
                Awaited::Answer => (self.hello_now(&req).await, false),
                Awaited::Interrupted => (self.hello_now(&req).await, true),
                Awaited::Shutdown => ((shutting_down(), None), true),
                Awaited::Gone => return Ok(()),
            };
            let id = self.next_id();
            let bits = if last { 0 } else { flags::MORE_TO_COME };
            self.send(encode_op_msg(id, reply_to, bits, &to_bytes(&doc)))
                .await?;
            if last {
                return Ok(());
            }
            reply_to = id;
            // The client has the version it was just sent: the next answer waits.
            if let Some(shown) = shown {
                req.seen(shown);
            }
        }
    }

    /// Waits as long as `req` asks (zero unless it is awaitable with the current
    /// `topologyVersion`), ending early when the topology changes, shutdown begins, or
    /// the client sends or closes.
    async fn await_hello(&mut self, req: &HelloRequest) -> Awaited {
        // Subscribed before the version is read, so a change in between still wakes us.
        let mut changes = self.ctx.pool.watch_info();
        changes.borrow_and_update();
        let wait = req.wait(self.ctx.topology_version());
        if wait.is_zero() {
            return Awaited::Answer;
        }
        let token = self.token.clone();
        tokio::select! {
            _ = token.cancelled() => Awaited::Shutdown,
            _ = tokio::time::sleep(wait) => Awaited::Answer,
            _ = changes.changed() => Awaited::Answer,
            activity = self.client_activity() => match activity {
                Ok(Activity::Sent) => Awaited::Interrupted,
                Ok(Activity::Closed) | Err(_) => Awaited::Gone,
            },
        }
    }

    /// The hello answer as things stand (negotiating compression on the first one), and
    /// the `topologyVersion` it shows.
    async fn hello_now(&mut self, req: &HelloRequest) -> (Document, Option<TopologyVersion>) {
        let info = self.ctx.server_info().await;
        let chosen = req.negotiate(self.compressor);
        self.compressor = self.compressor.or(chosen);
        let shown = self.ctx.topology_version();
        let mut doc = hello_reply(
            req,
            &info,
            shown,
            self.connection_id,
            self.auth.enabled(),
            chosen,
        );
        gossip_cluster_time(&mut doc, self.ctx.cluster_time.newest());
        (doc, Some(shown))
    }
}

fn shutting_down() -> Document {
    error_doc(ErrorCode::ShutdownInProgress, "sluice is shutting down")
}
