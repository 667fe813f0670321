//! The collector (`freshet collect`, docs/collector.md): a Flume-style agent that moves events from where
//! they are produced into Kafka without loss. Sources hand events through an [`intake::Intake`]
//! (interceptors, dead letters) into channels — the durable disk [`channel`] or a memory one — and sinks
//! take them out, committing only after the destination acknowledged them.

pub mod agent;
pub mod channel;
pub mod http;
pub mod intake;
pub mod interceptor;
pub mod source;
pub mod tail;
