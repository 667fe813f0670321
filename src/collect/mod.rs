//! The collector (`freshet collect`, issue 5): a Flume-style agent that moves events from where they are
//! produced into Kafka without loss. So far only its durable disk [`channel`] exists: segment files plus a
//! checkpoint, between the sources that put events and the sinks that take them.

pub mod agent;
pub mod channel;
pub mod interceptor;
