//! Small helpers for Tower services.

/// Takes the instance of a service that was polled ready, for a call
/// whose future owns it, leaving a clone behind: the instance that said
/// ready makes the call (tower's guidance: a clone has not been polled
/// ready and may not be), and the service keeps a fresh clone for the
/// next `poll_ready`.
///
/// ```
/// use floodwall_core::service::take_ready;
///
/// let mut service = vec![1, 2];
/// let ready = take_ready(&mut service);
/// assert_eq!((ready, service), (vec![1, 2], vec![1, 2]));
/// ```
pub fn take_ready<S: Clone>(service: &mut S) -> S {
    let clone = service.clone();
    std::mem::replace(service, clone)
}
