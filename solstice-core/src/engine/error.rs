//! [`EngineError`]: why an engine call failed.

/// Why the engine could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] solstice_queue::QueueError),
    /// The workflow cannot be planned.
    #[error(transparent)]
    Plan(#[from] solstice_kdl::PlanError),
    /// The runner endpoint could not listen.
    #[error("the runner endpoint cannot listen")]
    Listen(#[source] std::io::Error),
    /// A declared secret has no value.
    #[error("secret `{0}` is declared by the workflow but has no value")]
    MissingSecret(String),
    /// The secret store could not be read.
    #[error("the secret store cannot be read")]
    SecretStore(#[source] crate::secrets::SecretError),
    /// A declared secret's value is too short to be masked in logs.
    #[error(
        "secret `{0}` is shorter than {min} bytes: it could not be masked in the logs, so it is refused",
        min = crate::log::MIN_SECRET_LEN
    )]
    SecretTooShort(String),
}
