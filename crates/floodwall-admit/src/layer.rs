//! Layers for the two modes, built from any admission layer's policy.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::{Backpressure, Guarded, Reserve, UntilBodyEnd};

/// A layer that wraps services in [`Guarded`] with one shared policy.
pub struct GuardedLayer<P> {
    policy: Arc<P>,
}

/// A layer that wraps services in [`UntilBodyEnd`] with one shared policy:
/// permits are held until response bodies end.
pub struct UntilBodyEndLayer<P> {
    policy: Arc<P>,
}

/// A layer that wraps services in [`Backpressure`] with one shared policy:
/// permits are taken in `poll_ready`.
pub struct BackpressureLayer<P> {
    policy: Arc<P>,
}

macro_rules! policy_layer {
    ($layer:ident, $service:ident $(, $bound:path)?) => {
        impl<P> $layer<P> {
            /// A layer sharing `policy`.
            pub fn new(policy: Arc<P>) -> Self {
                Self { policy }
            }

            /// The policy.
            pub fn policy(&self) -> &Arc<P> {
                &self.policy
            }
        }

        impl<P> Clone for $layer<P> {
            fn clone(&self) -> Self {
                Self {
                    policy: self.policy.clone(),
                }
            }
        }

        impl<P: fmt::Debug> fmt::Debug for $layer<P> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($layer))
                    .field("policy", &self.policy)
                    .finish()
            }
        }

        impl<S, P $(: $bound)?> Layer<S> for $layer<P> {
            type Service = $service<S, P>;

            fn layer(&self, inner: S) -> Self::Service {
                $service::new(inner, self.policy.clone())
            }
        }
    };
}

policy_layer!(GuardedLayer, Guarded);
policy_layer!(UntilBodyEndLayer, UntilBodyEnd);
policy_layer!(BackpressureLayer, Backpressure, Reserve);
