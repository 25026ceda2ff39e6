//! # solstice-queue
//!
//! The `JobQueue` trait (publish, consume with explicit ack/nack, redelivery,
//! dead-lettering), generic over a serde message, with an in-memory queue for
//! the embedded deployment and a RabbitMQ queue (lapin) for multi-host ones.
//! A conformance suite behind the `testing` feature will check every
//! implementation against the same contract.
//!
//! Nothing is implemented here yet.
